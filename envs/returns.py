"""Reference returns for normalised scores ``(R - R_random) / (R_opt - R_random)``.

* Tabular worlds: *exact* optimal and uniform-random expected episode returns
  by backward induction over the full state (free cell x presence bitmask, so
  reappearance is modelled) and over time.  Episodes are time-limited, so the
  reference is the **finite-horizon, undiscounted** optimum of the expected
  return of one episode of ``max_episode_steps`` steps, averaged over the
  uniform start cells -- exactly what an agent's episode return estimates.
  The optimum depends on the action set (with 18 actions an agent may walk over
  a negative object without collecting it), so it is computed per env instance.
* Chains: analytic +1 (optimal) and 0 (random); see ``envs.chain``.
* Procedural families (``envs.procgen``): per level -- tabular levels by the
  vectorised JAX DP of ``envs.procgen_returns``, chain levels analytically,
  random-grid levels none.  They have no entry in the table (a family has no
  single reference; normalise per level instead).
* Every env: a Monte-Carlo estimate of the uniform-random policy's return
  (``random_return_mc``: a jitted, vmapped scan that runs each of ``num_envs``
  copies for exactly one episode).
* Random grids and gymnax games have no known optimum (``None``).

Because tabular optima depend on the per-lifetime object cells, the reports
read ``envs/reference_returns.json`` (means over 16 sampled lifetimes, fixed
seed), produced by ``python -m envs.returns`` (``build_reference_table``).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs import chain as chain_lib
from envs import procgen, procgen_returns, registry
from envs.base import Environment
from envs.tabular import TabularGrid

TABLE_PATH = os.path.join(os.path.dirname(__file__), "reference_returns.json")


# ---------------------------------------------------------------- tabular DP
def _transition_tables(env: TabularGrid, obj_cells: np.ndarray):
  """Static arrays for backward induction over states ``(cell, mask)``.

  Returns ``(gather_idx [C, M, A] int, reward [C, M, A], cont [C, M, A])``:
  ``Q = reward + cont * stacked_next_values.flat[gather_idx]`` where the stack
  is ``[U_without_0, ..., U_without_{n-1}, U_all]``, each ``[C, M]`` (see
  ``tabular_values``).
  """
  geom = env.geometry
  n = env.num_objects
  num_cells, num_masks = env.num_cells, 2**n
  obj_at = -np.ones(num_cells, np.int64)
  obj_at[obj_cells] = np.arange(n)
  cells = np.arange(num_cells)[:, None, None]
  masks = np.arange(num_masks)[None, :, None]
  moves = geom.move_of_action[None, None, :]
  collect = geom.collect_of_action[None, None, :]
  nxt = geom.next_free[cells, moves]                       # [C, 1, A]
  j = obj_at[nxt]                                          # [C, 1, A]
  jj = np.maximum(j, 0)
  present = (masks >> jj) & 1
  hit = (j >= 0) & (present == 1) & collect                # [C, M, A]
  hit = np.broadcast_to(hit, (num_cells, num_masks, len(geom.move_of_action)))
  nxt = np.broadcast_to(nxt, hit.shape)
  masks_b = np.broadcast_to(masks, hit.shape)
  jj = np.broadcast_to(jj, hit.shape)
  block = np.where(hit, jj, n)
  next_mask = np.where(hit, masks_b & ~(1 << jj), masks_b)
  gather_idx = (block * num_cells + nxt) * num_masks + next_mask
  reward = np.where(hit, env.rewards[jj], 0.0)
  cont = np.where(hit, 1.0 - env.end_probs[jj], 1.0)
  return gather_idx, reward, cont


def _respawn(values: np.ndarray, bit: int, prob: float, n: int) -> np.ndarray:
  """Applies "object ``bit`` reappears with ``prob`` if absent" to ``values [C, M]``."""
  if prob == 0.0:
    return values
  v = values.reshape((values.shape[0],) + (2,) * n)
  axis = n - bit  # C-order: the last axis is bit 0.
  absent = np.take(v, 0, axis=axis)
  present = np.take(v, 1, axis=axis)
  new_absent = (1.0 - prob) * absent + prob * present
  return np.stack([new_absent, present], axis=axis).reshape(values.shape)


def tabular_values(env: TabularGrid, params, horizon: int | None = None,
                   policy: str = "optimal") -> np.ndarray:
  """``V_0 [C, M]``: expected return of ``horizon`` remaining steps from each state.

  Args:
    env: a tabular world (any action set).
    params: its ``TabularParams`` (object cells).
    horizon: steps left (default ``env.max_episode_steps``).
    policy: ``"optimal"`` (max over actions) or ``"random"`` (uniform mean).
  """
  horizon = env.max_episode_steps if horizon is None else int(horizon)
  n = env.num_objects
  obj_cells = np.asarray(params.obj_cells)
  gather_idx, reward, cont = _transition_tables(env, obj_cells)
  values = np.zeros((env.num_cells, 2**n))
  probs = env.respawn_probs
  for _ in range(horizon):
    # Values after the respawn draws of objects absent *before* the step.
    without = []
    for j in range(n):
      u = values
      for i in range(n):
        if i != j:
          u = _respawn(u, i, probs[i], n)
      without.append(u)
    u_all = _respawn(without[0], 0, probs[0], n) if n else values
    stack = np.stack(without + [u_all]).reshape(-1)
    q = reward + cont * stack[gather_idx]
    values = q.max(-1) if policy == "optimal" else q.mean(-1)
  return values


def tabular_return(env: TabularGrid, params, policy: str = "optimal",
                   horizon: int | None = None) -> float:
  """Expected episode return from the reset distribution (uniform start cells)."""
  values = tabular_values(env, params, horizon, policy)
  starts = np.asarray(params.start_cells)
  return float(values[starts, 2**env.num_objects - 1].mean())


# --------------------------------------------------------------- Monte Carlo
def random_return_mc(env: Environment, params=None, num_envs: int = 512, seed: int = 0,
                     max_steps: int | None = None) -> tuple[float, float]:
  """Uniform-random policy: mean and standard error of one-episode returns.

  Each of ``num_envs`` copies runs for ``max_episode_steps`` steps (an episode
  cannot be longer) and counts only its first episode.  ``params`` defaults to
  ``env.default_params()`` and is shared by all copies.
  """
  params = env.default_params() if params is None else params
  steps = env.max_episode_steps if max_steps is None else max_steps

  @jax.jit
  def run(key):
    k_reset, k_scan = jax.random.split(key)
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), params)

    def body(carry, key):
      state, ret, alive = carry
      k_a, k_s = jax.random.split(key)
      action = jax.random.randint(k_a, (num_envs,), 0, env.num_actions)
      out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
          jax.random.split(k_s, num_envs), state, action, params)
      ret = ret + jnp.where(alive, out.reward, 0.0)
      alive = alive & ~out.done
      return (out.state, ret, alive), None

    init = (state, jnp.zeros(num_envs), jnp.ones(num_envs, jnp.bool_))
    (_, ret, _), _ = jax.lax.scan(body, init, jax.random.split(k_scan, steps))
    return ret

  ret = np.asarray(run(jax.random.PRNGKey(seed)), np.float64)
  return float(ret.mean()), float(ret.std(ddof=1) / np.sqrt(len(ret)))


# ------------------------------------------------------------ public helpers
def _exact_return(env: Environment, params, policy: str) -> float | None:
  """Exact expected episode return of ``policy`` where one is known, else None.

  Tabular worlds and tabular family levels by DP, chains (fixed and family)
  analytically; ``params`` defaults to ``env.default_params()``.
  """
  params = env.default_params() if params is None else params
  if isinstance(env, TabularGrid):
    return tabular_return(env, params, policy)
  if isinstance(env, procgen.GridFamily) and not env.config.per_episode_objects:
    return float(procgen_returns.level_return(env, params, policy))
  if isinstance(env, (chain_lib.DelayedChain, procgen.ChainFamily)):
    value = env.optimal_return(params) if policy == "optimal" else env.random_return(params)
    return float(value)
  return None


def optimal_return(name: str, params=None, **env_kwargs) -> float | None:
  """Optimal expected episode return of ``name`` under ``params`` (None if unknown).

  ``params`` defaults to ``env.default_params()``; for a procedural family
  (``envs.procgen``) ``params`` is a level (``env.level(seed)``).
  """
  return _exact_return(registry.make(name, **env_kwargs), params, "optimal")


def random_return(name: str, params=None, **env_kwargs) -> float:
  """Uniform-random expected episode return: exact for tabular and chains, else MC."""
  env = registry.make(name, **env_kwargs)
  exact = _exact_return(env, params, "random")
  return random_return_mc(env, params)[0] if exact is None else exact


def load_table(path: str = TABLE_PATH) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def reference_returns(name: str, path: str = TABLE_PATH) -> dict[str, float | None]:
  """``{"optimal": float | None, "random": float}`` from the precomputed table.

  Values are for the default action set (9 for grid worlds) and are means over
  the lifetimes recorded in the table's ``"_meta"``.
  """
  table = load_table(path)["envs"]
  if name not in table:
    raise ValueError(f"no reference returns for {name!r}; "
                     f"regenerate with `python -m envs.returns` ({sorted(table)})")
  entry = table[name]
  return {"optimal": entry["optimal"], "random": entry["random"]}


# Optima known analytically for games the table otherwise only samples: CartPole-v1
# pays +1 per step up to its 500-step limit, and a balancing policy reaches it.
KNOWN_OPTIMA = {"CartPole": 500.0}


def family_pair(name: str, num_levels: int = 256, seed: int = 0) -> tuple[float, float] | None:
  """``(R_opt, R_random)`` of a procedural family, each the mean over ``num_levels`` levels
  drawn as its lifetimes draw them (``envs.procgen_returns.level_reference``); None for
  anything else (random-grid families have no exact returns)."""
  from envs import procgen_returns
  env = registry.make(name)
  if not hasattr(env, "sample_params"):
    return None
  level = env.sample_params(jax.random.PRNGKey(seed))
  if procgen_returns.level_reference(env, level) is None:
    return None
  keys = jax.random.split(jax.random.PRNGKey(seed), num_levels)
  refs = jax.jit(jax.vmap(lambda k: procgen_returns.level_reference(env, env.sample_params(k))))
  optimal, random_ = (float(np.mean(x)) for x in refs(keys))
  return (optimal, random_) if optimal > random_ else None


def reference_pair(name: str, path: str = TABLE_PATH) -> tuple[float, float] | None:
  """``(R_opt, R_random)`` of ``name`` for normalised scores, from the table.

  ``None`` where no score can be given: no optimum known (random grids, gymnax
  games), optimum equal to the random return, ``name`` not in the table, or no
  table file.
  """
  try:
    ref = reference_returns(name, path)
  except (ValueError, OSError, KeyError):
    return None
  if ref["optimal"] is None or ref["optimal"] == ref["random"]:
    return None
  return float(ref["optimal"]), float(ref["random"])


def normalise(value, reference: tuple[float, float]):
  """``(value - R_random) / (R_opt - R_random)`` for ``reference = (R_opt, R_random)``.

  Elementwise on a float, a numpy array or a jax array (also under ``jit``).
  """
  optimal, random_ = reference
  return (value - random_) / (optimal - random_)


def normalised_score(name: str, value, path: str = TABLE_PATH):
  """The normalised score of episode return(s) ``value`` on ``name``; vectorised.

  ``(R - R_random) / (R_opt - R_random)`` with the table's reference returns
  (see ``reference_pair``); ``None`` where the env has none.  Lists and tuples
  give a numpy array; floats, numpy and jax arrays keep their kind.
  """
  reference = reference_pair(name, path)
  if reference is None:
    return None
  if isinstance(value, (list, tuple)):
    value = np.asarray(value, np.float64)
  return normalise(value, reference)


def build_reference_table(names=None, num_lifetimes: int = 16, seed: int = 0,
                          mc_envs: int = 512, path: str | None = TABLE_PATH,
                          verbose: bool = True) -> dict[str, Any]:
  """Computes (and writes to ``path``) the reference table.

  For each env, ``num_lifetimes`` params are drawn with
  ``jax.random.split(PRNGKey(seed), num_lifetimes)``; tabular entries are exact
  DP means over them, chains analytic, the rest Monte-Carlo random returns
  (random grids and gymnax games have nothing to draw per lifetime: one batch of
  ``num_lifetimes * mc_envs // 4`` one-episode rollouts).
  """
  suites = registry.SUITES
  names = list(suites["all"] + suites["minatar"] + suites["classic"]
               ) if names is None else list(names)
  out: dict[str, Any] = {}
  for name in names:
    t0 = time.perf_counter()
    env = registry.make(name)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_lifetimes)
    if isinstance(env, TabularGrid):
      ps = [env.sample_params(k) for k in keys]
      opt = [tabular_return(env, p, "optimal") for p in ps]
      rnd = [tabular_return(env, p, "random") for p in ps]
      entry = dict(optimal=float(np.mean(opt)), random=float(np.mean(rnd)),
                   optimal_std_over_lifetimes=float(np.std(opt)),
                   random_std_over_lifetimes=float(np.std(rnd)),
                   method="exact finite-horizon undiscounted DP, mean over lifetimes")
    elif isinstance(env, chain_lib.DelayedChain):
      entry = dict(optimal=1.0, random=0.0, method="analytic")
    else:
      # Random grids and gymnax games have no per-lifetime randomness in their
      # params: one batch of episodes under the default params.
      mean, sem = random_return_mc(env, None, num_envs=max(64, num_lifetimes * mc_envs // 4),
                                   seed=seed)
      entry = dict(optimal=KNOWN_OPTIMA.get(name), random=mean, random_sem=sem,
                   method="Monte-Carlo uniform-random one-episode returns, default params")
    out[name] = entry
    if verbose:
      print(f"{name:28s} optimal={entry['optimal']} random={entry['random']:.4f} "
            f"({time.perf_counter() - t0:.1f}s)", flush=True)
  table = {
      "_meta": {
          "made_by": "python -m envs.returns (envs.returns.build_reference_table)",
          "num_lifetimes": num_lifetimes, "seed": seed, "mc_envs_per_lifetime": mc_envs,
          "action_set": "default (9 actions for grid worlds)",
          "optimal": "finite-horizon undiscounted expected episode return of the optimal "
                     "policy from the reset distribution (tabular: exact DP); None if unknown",
          "random": "uniform-random policy expected episode return (tabular: exact DP; chains: "
                    "analytic; others: Monte-Carlo)",
      },
      "envs": out,
  }
  if path:
    with open(path, "w") as f:
      json.dump(table, f, indent=1, sort_keys=True)
  return table


if __name__ == "__main__":
  build_reference_table()
