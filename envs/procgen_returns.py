"""Exact returns of procedurally generated levels, vectorised over levels (JAX).

For a level of the tabular grid family (``envs.procgen``, ``procgen/tabular``)
``level_returns`` gives the expected return of one episode from the reset
distribution under the optimal and the uniform-random policy: finite-horizon,
undiscounted backward induction over the full state (canvas cell x presence
mask of the ``max_objects`` slots) for the level's own episode limit, the same
quantity ``envs.returns.tabular_return`` gives for the fixed tabular worlds.
It is a ``lax.scan`` over ``max_episode_steps`` backups (the steps beyond the
level's limit leave the values unchanged), so it ``jit``s and ``vmap``s over
levels.  Chain levels have analytic references (``ChainFamily.optimal_return``
/ ``random_return``); random-grid levels have none.

One backup, with ``S`` the set of absent objects that reappear (each absent
object independently with its probability, drawn for the objects absent
*before* the step, as in ``envs.tabular``)::

    Q(c, m, a) = hit * r_j + cont * E_S[V(c', ((m | S) & ~bit_j))]

where ``c'`` is the cell ``a`` leads to, ``j`` the object collected there
(``hit``; ``bit_j = 0`` when none) and ``cont = 1 - end_j`` when one is
collected, else 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from envs.procgen import ChainFamily, GridFamily, GridLevel


def _mask_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
  """``(index [n+1, M, M], bits [M, n])``: ``index[h, m, k] = (m | k) & ~bit_h``.

  ``h = n`` means "nothing collected" (no bit cleared); ``bits[m, j]`` is bit
  ``j`` of mask ``m``.
  """
  num_masks = 2**n
  m = np.arange(num_masks)[:, None]
  k = np.arange(num_masks)[None, :]
  clear = np.array([1 << j for j in range(n)] + [0])[:, None, None]
  index = (m | k)[None] & ~clear
  bits = (np.arange(num_masks)[:, None] >> np.arange(n)[None, :]) & 1
  return index.astype(np.int32), bits.astype(bool)


def _respawn_weights(level: GridLevel, bits: np.ndarray) -> jax.Array:
  """``W [M, M]``: probability that exactly the objects of mask ``k`` reappear from mask ``m``."""
  p = jnp.where(level.active, level.respawn_probs, 0.0)          # [n]
  absent = ~jnp.asarray(bits)                                      # [M, n] for m
  k_bits = jnp.asarray(bits)                                       # [M, n] for k
  per_obj = jnp.where(k_bits[None], p, 1.0 - p)                    # [1, M(k), n]
  per_obj = jnp.where(absent[:, None], per_obj, jnp.where(k_bits[None], 0.0, 1.0))
  return jnp.prod(per_obj, axis=-1)                                # [M(m), M(k)]


def _transition(env: GridFamily, level: GridLevel, bits: np.ndarray):
  """Per ``(c, m, a)``: next cell ``[C, 1, A]``, hit slot ``[C, M, A]`` (n: none), reward, cont."""
  n = env.config.max_objects
  cells = jnp.arange(env.num_cells, dtype=jnp.int32)
  actions = jnp.arange(env.num_actions, dtype=jnp.int32)
  nxt = jax.vmap(lambda c: jax.vmap(lambda a: env.move(c, a, level))(actions))(cells)  # [C, A]
  at = (nxt[..., None] == level.obj_cells) & level.active          # [C, A, n]
  slot = jnp.where(jnp.any(at, -1), jnp.argmax(at, -1), n)         # [C, A]
  present = jnp.concatenate([jnp.asarray(bits), jnp.zeros((2**n, 1), bool)], axis=1)  # [M, n+1]
  hit = jnp.moveaxis(present[:, slot], 0, 1) & level.action_collect  # [C, M, A]
  slot = jnp.where(hit, slot[:, None, :], n)
  rewards = jnp.append(level.rewards, 0.0)[slot]
  cont = 1.0 - jnp.append(level.end_probs, 0.0)[slot]
  return nxt[:, None, :], slot, rewards, cont


def level_values(env: GridFamily, level: GridLevel, policy: str = "optimal") -> jax.Array:
  """``V [C, M]``: expected return of a whole episode (the level's limit) from each state."""
  if env.config.per_episode_objects:
    raise ValueError("exact returns exist only for the tabular kind (objects fixed per level)")
  if policy not in ("optimal", "random"):
    raise ValueError(f"policy must be optimal or random, got {policy!r}")
  n = env.config.max_objects
  index, bits = _mask_tables(n)
  weights = _respawn_weights(level, bits)                          # [M, M]
  nxt, slot, rewards, cont = _transition(env, level, bits)
  masks = jnp.arange(2**n)[None, :, None]

  def backup(values, t):
    after = jnp.einsum("chmk,mk->chm", values[:, jnp.asarray(index)], weights)  # [C, n+1, M]
    q = rewards + cont * after[nxt, slot, masks]                   # [C, M, A]
    new = q.max(-1) if policy == "optimal" else q.mean(-1)
    return jnp.where(t < level.limit, new, values), None

  init = jnp.zeros((env.num_cells, 2**n), jnp.float32)
  values, _ = jax.lax.scan(backup, init, jnp.arange(env.max_episode_steps))
  return values


def level_return(env: GridFamily, level: GridLevel, policy: str = "optimal") -> jax.Array:
  """``[]`` expected episode return from the reset distribution (uniform start cells)."""
  values = level_values(env, level, policy)
  full = jnp.sum(jnp.where(level.active, 1 << jnp.arange(env.config.max_objects), 0))
  start = level.start.astype(jnp.float32)
  return jnp.sum(values[:, full] * start) / jnp.sum(start)


def level_returns(env: GridFamily, levels: GridLevel) -> tuple[jax.Array, jax.Array]:
  """``(optimal [L], random [L])`` of a batch of levels (leading axis ``L``), jitted."""
  both = lambda lv: (level_return(env, lv, "optimal"), level_return(env, lv, "random"))
  return jax.jit(jax.vmap(both))(levels)


def level_reference(env, level) -> tuple[jax.Array, jax.Array] | None:
  """``(optimal [], random [])`` expected episode returns of one level, or None.

  Jittable and vmappable (a trainer can normalise a lifetime's returns by its
  own level): tabular levels by the DP above, chain levels analytically;
  random-grid levels (and anything else) have none.
  """
  if isinstance(env, ChainFamily):
    return env.optimal_return(level), env.random_return(level)
  if isinstance(env, GridFamily) and not env.config.per_episode_objects:
    return level_return(env, level, "optimal"), level_return(env, level, "random")
  return None
