"""A level curriculum for procedurally generated families (GROOVE / prioritised level replay).

A fixed-size table holds level seeds of a family's *training* stream
(``envs.procgen``: ``env.level(seed)``, even seeds ``2 * i``, ``i`` below the
family's ``num_levels``) with a score per level and the clock tick it was last
played.  ``sample`` draws each new lifetime's level: with probability
``replay_prob`` a level from the table, prioritised by score rank mixed with
staleness (Jiang et al. 2021, "Prioritized Level Replay"), else a fresh
uniform level of the stream.  ``update`` records the scores of the levels
just played (replacing the lowest-scoring entry when a new level scores
higher) and advances the clock.  Everything is a pure, jittable function of a
``CurriculumState`` of arrays, which checkpoints like any other array tree.

Scores (higher = replay more; ``learnability`` and ``positive_value_loss``
compute them):

* learnability ``p (1 - p)`` with ``p`` the lifetime's return normalised to
  ``[0, 1]`` by its level's (random, optimal) returns (GROOVE's learnability
  for a success rate; highest for levels half solved);
* positive value loss ``mean(max(A, 0))`` of GAE advantages (PLR's regret
  proxy), for levels without reference returns.

Use (``cur = Curriculum(CurriculumConfig(num_levels=family.config.num_levels))``,
``state = cur.init(key)`` once, checkpointed with the job): at lifetime
turnover, for the ``n`` agents whose lifetimes end::

    state = cur.update(state, ended_level_seeds, ended_scores)
    seeds, from_replay = cur.sample(state, key, n)
    env_params = jax.vmap(env.level)(seeds)      # instead of env.sample_params
    log(stats(state, from_replay))
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from envs.procgen import level_seed

_EMPTY_SEED = -1


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
  """Level replay settings.

  Attributes:
    table_size: levels the table holds [PLR: 4000 for ProcGen; chosen: 256].
    replay_prob: probability that a sampled level comes from the table once it
      holds a level [PLR: 0.5].
    temperature: beta of rank prioritisation, ``P ~ (1 / rank)^(1 / beta)``
      [PLR: 0.1; chosen 0.3, flatter for a small table].
    staleness_coef: rho, weight of the staleness distribution in the mixture
      ``(1 - rho) P_score + rho P_stale`` [PLR: 0.1; chosen 0.3].
    num_levels: the family's training index range (``None``: ``2**30``, the
      family default); fresh seeds are ``envs.procgen.level_seed(key, "train",
      num_levels)``, so they match the family's own ``sample_params``.
  """
  table_size: int = 256
  replay_prob: float = 0.5
  temperature: float = 0.3
  staleness_coef: float = 0.3
  num_levels: int | None = None

  def __post_init__(self):
    if int(self.table_size) < 1:
      raise ValueError(f"table_size must be >= 1, got {self.table_size}")
    if not 0.0 <= self.replay_prob <= 1.0 or not 0.0 <= self.staleness_coef <= 1.0:
      raise ValueError("replay_prob and staleness_coef must lie in [0, 1]")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if self.num_levels is not None and int(self.num_levels) < 1:
      raise ValueError(f"num_levels must be >= 1 or None, got {self.num_levels}")


class CurriculumState(NamedTuple):
  """The level table; ``[S]`` arrays for ``S = table_size`` slots.

  Attributes:
    seeds: ``[S]`` int32 level seeds (-1: empty slot).
    scores: ``[S]`` float32 last score of each level (-inf: empty slot).
    last_seen: ``[S]`` int32 clock tick of the level's last update.
    visits: ``[S]`` int32 times the level's score was recorded.
    clock: ``[]`` int32 ``update`` calls so far.
  """
  seeds: jax.Array
  scores: jax.Array
  last_seen: jax.Array
  visits: jax.Array
  clock: jax.Array


def filled(state: CurriculumState) -> jax.Array:
  """``[S]`` bool: slots holding a level."""
  return state.seeds >= 0


class Curriculum:
  """The curriculum's pure functions under one ``CurriculumConfig`` (static; jit-friendly)."""

  def __init__(self, config: CurriculumConfig = CurriculumConfig()):
    self.config = config

  def init(self, key: jax.Array | None = None) -> CurriculumState:
    """An empty table (``key`` unused: the empty table is deterministic; kept for the API)."""
    del key
    s = int(self.config.table_size)
    return CurriculumState(seeds=jnp.full((s,), _EMPTY_SEED, jnp.int32),
                           scores=jnp.full((s,), -jnp.inf, jnp.float32),
                           last_seen=jnp.zeros((s,), jnp.int32), visits=jnp.zeros((s,), jnp.int32),
                           clock=jnp.zeros((), jnp.int32))

  def replay_probs(self, state: CurriculumState) -> jax.Array:
    """``[S]`` replay distribution ``(1 - rho) P_rank + rho P_stale`` over filled slots.

    ``P_rank ~ (1 / rank)^(1 / beta)`` with rank 1 the highest score (ties: lower
    slot first); ``P_stale ~ clock - last_seen`` (uniform over filled slots when
    every level was just seen).  All zeros when the table is empty.
    """
    full = filled(state)
    order = jnp.argsort(jnp.where(full, -state.scores, jnp.inf), stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(1, order.shape[0] + 1))
    w_rank = jnp.where(full, (1.0 / rank) ** (1.0 / self.config.temperature), 0.0)
    stale = jnp.where(full, (state.clock - state.last_seen).astype(jnp.float32), 0.0)
    stale = jnp.where(stale.sum() > 0, stale, full.astype(jnp.float32))
    norm = lambda w: w / jnp.maximum(w.sum(), 1e-30)
    rho = self.config.staleness_coef
    return (1.0 - rho) * norm(w_rank) + rho * norm(stale)

  def sample(self, state: CurriculumState, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Level seeds for ``n`` new lifetimes.

    Returns:
      ``(level_seeds [n] int32, from_replay [n] bool)``: each seed is replayed
      from the table with probability ``replay_prob`` (never while it is empty),
      else a fresh training-stream seed.
    """
    k_coin, k_replay, k_fresh = jax.random.split(key, 3)
    replay = jax.random.uniform(k_coin, (n,)) < self.config.replay_prob
    replay = replay & jnp.any(filled(state))
    probs = self.replay_probs(state)
    slots = jax.random.choice(k_replay, probs.shape[0], (n,), p=probs)
    fresh = jax.vmap(lambda k: level_seed(k, "train", self.config.num_levels))(
        jax.random.split(k_fresh, n))
    return jnp.where(replay, state.seeds[slots], fresh).astype(jnp.int32), replay

  def update(self, state: CurriculumState, level_seeds: jax.Array,
             scores: jax.Array) -> CurriculumState:
    """See the module function ``update`` (it needs no config)."""
    return update(state, level_seeds, scores)


def update(state: CurriculumState, level_seeds: jax.Array, scores: jax.Array) -> CurriculumState:
  """Records the ``scores`` ``[n]`` of the levels ``level_seeds`` ``[n]`` just played.

  In order: a level in the table gets its new score; a new level takes the
  lowest-scoring slot (an empty one first) when its score is higher.  Entries
  with a non-finite score or a negative seed are ignored.  The clock then
  advances by one.
  """
  def one(st, xs):
    seed, score = xs
    valid = jnp.isfinite(score) & (seed >= 0)
    match = filled(st) & (st.seeds == seed)
    known = jnp.any(match)
    worst = jnp.argmin(jnp.where(filled(st), st.scores, -jnp.inf))
    slot = jnp.where(known, jnp.argmax(match), worst)
    write = valid & (known | (score > st.scores[worst]) | ~filled(st)[worst])
    set_ = lambda arr, v: arr.at[slot].set(jnp.where(write, v, arr[slot]))
    visits = jnp.where(known, st.visits[slot] + 1, 1)
    return st._replace(seeds=set_(st.seeds, seed), scores=set_(st.scores, score),
                       last_seen=set_(st.last_seen, st.clock),
                       visits=set_(st.visits, visits)), None

  xs = (jnp.asarray(level_seeds, jnp.int32), jnp.asarray(scores, jnp.float32))
  state, _ = jax.lax.scan(one, state, xs)
  return state._replace(clock=state.clock + 1)


def learnability(normalised_return: jax.Array) -> jax.Array:
  """``p (1 - p)`` with ``p = clip(normalised_return, 0, 1)`` (elementwise)."""
  p = jnp.clip(normalised_return, 0.0, 1.0)
  return p * (1.0 - p)


def positive_value_loss(advantages: jax.Array) -> jax.Array:
  """PLR's regret proxy: ``mean(max(A, 0))`` of ``[T, B]`` advantages -> ``[]``."""
  return jnp.mean(jnp.maximum(advantages, 0.0))


def stats(state: CurriculumState, from_replay: jax.Array | None = None) -> dict:
  """Scalars for the log: the table's mean / max score, levels held, mean
  staleness, and (given ``from_replay`` of the last ``sample``) the replay share."""
  full = filled(state)
  count = jnp.sum(full)
  safe = jnp.maximum(count, 1)
  out = {"levels": count,
         "mean_score": jnp.sum(jnp.where(full, state.scores, 0.0)) / safe,
         "max_score": jnp.max(jnp.where(full, state.scores, -jnp.inf)),
         "mean_staleness": jnp.sum(jnp.where(full, state.clock - state.last_seen, 0)) / safe}
  if from_replay is not None:
    out["replay_share"] = jnp.mean(jnp.asarray(from_replay, jnp.float32))
  return out
