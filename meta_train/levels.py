"""The meta-training job's side of the level curriculum (``--curriculum``).

``meta_train.curriculum`` holds the table (pure functions of a
``CurriculumState``); this module connects it to a training environment's
group of lifetimes, inside the compiled meta-update (no Python per lifetime):
at every meta-update ``turnover_levels`` scores the lifetimes that ended,
records those scores in the table, and draws the level seeds of the lifetimes
that replace them (replayed high-score levels or fresh ones).

Modes (``TrainConfig.curriculum``):

* ``learnability``: ``p (1 - p)`` of the finished lifetime's final return
  (``EnvGroup.ret_ema``) normalised by its own level's (random, optimal)
  returns (``envs.procgen_returns.level_reference``; tabular and chain levels).
* ``regret``: the positive value loss ``mean(max(A, 0))`` of the GAE advantages
  of the lifetime's last meta-objective rollout (``MetaMetrics.positive_value_loss``;
  PLR's regret proxy), for every family.

Only the training stream of a procedurally generated family has a curriculum
(``procgen/tabular``, ``procgen/random``, ``procgen/chain``); other environments
draw their tasks as before.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from envs import procgen
from envs import returns as returns_lib
from envs.procgen_returns import level_reference
from lpg.meta_objective import MetaMetrics
from meta_train.curriculum import Curriculum, CurriculumConfig, CurriculumState, learnability
from meta_train.curriculum import stats as table_stats

MODES = ("off", "learnability", "regret")
# Columns of the per-environment stats vector (``GroupStats.curriculum``).
STATS = ("levels", "mean_score", "max_score", "mean_staleness", "replayed", "new_lifetimes")


def has_curriculum(env) -> bool:
  """True for the training stream of a procedurally generated family."""
  return isinstance(env, procgen._Family) and env.config.split == "train"


def make_curricula(mode: str, envs) -> tuple[Curriculum | None, ...]:
  """One ``Curriculum`` per environment of ``envs`` (None where it has none, or mode off)."""
  if mode == "off":
    return tuple(None for _ in envs)
  return tuple(Curriculum(CurriculumConfig(num_levels=env.config.num_levels))
               if has_curriculum(env) else None for env in envs)


def init_states(curricula) -> tuple[CurriculumState | None, ...]:
  """The empty tables of ``make_curricula``'s curricula (None stays None)."""
  return tuple(None if c is None else c.init() for c in curricula)


def lifetime_scores(mode: str, env, lives, ret_ema: jax.Array, metrics: MetaMetrics,
                    done: jax.Array) -> jax.Array:
  """``[P]`` curriculum score of each lifetime (higher: replay its level more); NaN where
  not ``done``.

  Args:
    lives: ``[P]`` lifetimes (their ``env_params`` are the levels).
    ret_ema: ``[P]`` final-return averages (``population.track_returns``).
    metrics: ``[P]`` ``MetaMetrics`` of this meta-update.
    done: ``[P]`` bool, the lifetimes to score.  A tabular level's reference returns
      are a dynamic programme, so learnability computes them one lifetime at a time
      (``lax.map``) and only where ``done``: a few per meta-update, not ``P``.
  """
  if mode == "regret":
    return jnp.where(done, metrics.positive_value_loss, jnp.nan)

  def one(xs):
    level, ret, d = xs
    score = lambda: learnability(returns_lib.normalise(ret, level_reference(env, level)))
    return jax.lax.cond(d, score, lambda: jnp.asarray(jnp.nan, jnp.float32))
  return jax.lax.map(one, (lives.env_params, jnp.asarray(ret_ema, jnp.float32), done))


def turnover_levels(curriculum: Curriculum, mode: str, env, state: CurriculumState, lives,
                    ret_ema: jax.Array, done: jax.Array, ended: jax.Array,
                    metrics: MetaMetrics, key: jax.Array):
  """Records the finished lifetimes' scores and draws the next levels.

  Args:
    state: the table before this meta-update.
    lives, ret_ema, metrics: ``[P]`` after this meta-update.
    done: ``[P]`` bool, lifetimes whose score is recorded (ended, scored, with a return).
    ended: ``[P]`` bool, lifetimes replaced now (their new level counts in the stats).
    key: for the draw.
  Returns:
    ``(state, level_seeds [P] int32, stats [len(STATS)] float32)``; ``level_seeds``
    are candidates for all ``P`` (used where a lifetime ended).
  """
  scores = lifetime_scores(mode, env, lives, ret_ema, metrics, done)
  state = curriculum.update(state, lives.env_params.level_seed, scores)
  seeds, from_replay = curriculum.sample(state, key, ended.shape[0])
  s = table_stats(state)
  row = [s["levels"], s["mean_score"], s["max_score"], s["mean_staleness"],
         jnp.sum(from_replay & ended), jnp.sum(ended)]
  return state, seeds, jnp.stack([jnp.asarray(x, jnp.float32) for x in row])


def no_stats() -> jax.Array:
  """The stats vector of an environment without a curriculum (NaN)."""
  return jnp.full((len(STATS),), jnp.nan, jnp.float32)


def summarise(rows) -> dict:
  """One log entry from ``[n, len(STATS)]`` stats rows of an interval: the table's state at
  its end, and the share of the interval's new lifetimes that replayed a level."""
  last = dict(zip(STATS, (float(x) for x in rows[-1])))
  new, replayed = float(rows[:, STATS.index("new_lifetimes")].sum()), float(
      rows[:, STATS.index("replayed")].sum())
  return {"levels": int(last["levels"]),
          "mean_score": last["mean_score"] if last["levels"] else None,
          "max_score": last["max_score"] if last["levels"] else None,
          "mean_staleness": last["mean_staleness"], "new_lifetimes": int(new),
          "replay_fraction": replayed / new if new else None}
