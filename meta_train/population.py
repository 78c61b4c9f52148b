"""The population's lifetimes between meta-updates: pure array functions.

One ``EnvGroup`` per training environment holds that environment's lifetimes
(a ``Lifetime`` batch with a leading ``[P_e]`` dim) and their bookkeeping.  A
lifetime knows its update count ``n`` (``Lifetime.age``) and its planned length
``N`` (``Lifetime.horizon``); when ``n >= N`` (or the agent became non-finite)
it ends, its final return is credited to the bandit and a fresh agent on a
freshly drawn task takes its place (``turnover``), all by ``jnp.where``
masking inside the compiled step.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import returns as returns_lib

from lpg.meta_objective import Lifetime, MetaMetrics


class EnvGroup(NamedTuple):
  """One training environment's lifetimes and their bookkeeping (leading ``[P_e]``)."""
  lives: Lifetime      # agents, optimisers, critics, tasks, env states; age n, horizon N.
  arms: jax.Array      # [P_e] int32 bandit arm (inner learning rate, alpha_y) of each lifetime.
  ret_ema: jax.Array   # [P_e] float32 moving average of the lifetime's mean episode return.
  ret_seen: jax.Array  # [P_e] bool, ret_ema holds a value.
  scored: jax.Array    # [P_e] bool, the lifetime is credited to the bandit when it ends.


def stagger_ages(agents: int, lifetime_updates: int, num_inner: int) -> np.ndarray:
  """``[agents]`` int32 starting ages: agent i at i/agents of its lifetime, in whole K steps."""
  return ((np.arange(agents) * lifetime_updates // agents) // num_inner * num_inner).astype(
      np.int32)


def first_generation(lives: Lifetime, arms: jax.Array, ages: np.ndarray | None) -> EnvGroup:
  """The group a run starts with; ``ages`` (``[P_e]``) staggers it, None starts all at 0.

  Lifetimes that start part-way through (age > 0) are not credited to the bandit.
  """
  if ages is not None:
    lives = lives._replace(age=jnp.asarray(ages, jnp.int32))
  pe = arms.shape[0]
  return EnvGroup(lives=lives, arms=arms, ret_ema=jnp.zeros((pe,), jnp.float32),
                  ret_seen=jnp.zeros((pe,), jnp.bool_), scored=lives.age == 0)


def track_returns(ret_ema: jax.Array, ret_seen: jax.Array, metrics: MetaMetrics,
                  decay: float) -> tuple[jax.Array, jax.Array]:
  """Moving average of each lifetime's mean episode return over meta-updates.

  Args:
    ret_ema, ret_seen: ``[P]`` current average and whether it holds a value.
    metrics: this meta-update's ``MetaMetrics`` (``return_sum``, ``episodes``: ``[P]``).
    decay: weight of the old average (``TrainConfig.return_ema_decay``).
  Returns:
    ``(ret_ema, ret_seen)``, ``[P]`` each; lifetimes without a finished episode keep theirs.
  """
  mean_ret = metrics.return_sum / jnp.maximum(metrics.episodes, 1.0)
  has = metrics.episodes > 0
  ema = jnp.where(has, jnp.where(ret_seen, decay * ret_ema + (1 - decay) * mean_ret, mean_ret),
                  ret_ema)
  return ema, ret_seen | has


def agent_finite(lives: Lifetime) -> jax.Array:
  """``[P]`` bool: the agent's parameters are finite."""
  leaves = jax.tree_util.tree_leaves(lives.agent_params)
  per = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in leaves]
  return functools.reduce(jnp.logical_and, per)


def lifetime_ended(lives: Lifetime) -> jax.Array:
  """``[P]`` bool: the lifetime reached its planned length N, or its agent is non-finite."""
  return (lives.age >= lives.horizon) | ~agent_finite(lives)


def tree_where(mask: jax.Array, a, b):
  """Per-lifetime select between two batched pytrees (``mask`` ``[P]``)."""
  def sel(x, y):
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, y)
  return jax.tree_util.tree_map(sel, a, b)


def turnover(group: EnvGroup, lives: Lifetime, ret_ema: jax.Array, ret_seen: jax.Array,
             ended: jax.Array, fresh: Lifetime, fresh_arms: jax.Array) -> EnvGroup:
  """Replaces the ended lifetimes by fresh ones.

  Args:
    group: the group before this meta-update (its ``arms`` and ``scored``).
    lives: its lifetimes after this meta-update's K inner updates (``[P]``).
    ret_ema, ret_seen: ``[P]`` from ``track_returns``.
    ended: ``[P]`` bool from ``lifetime_ended``.
    fresh, fresh_arms: ``[P]`` candidate new lifetimes and their arms (used where ``ended``).
  Returns:
    The group for the next meta-update; a replaced lifetime starts with no return
    average and is scored.
  """
  return EnvGroup(lives=tree_where(ended, fresh, lives),
                  arms=jnp.where(ended, fresh_arms, group.arms),
                  ret_ema=jnp.where(ended, 0.0, ret_ema),
                  ret_seen=ret_seen & ~ended,
                  scored=group.scored | ended)


def normalise(reference: tuple[float, float] | None, value: jax.Array) -> jax.Array:
  """``envs.returns.normalise``; ``value`` itself without a reference."""
  return value if reference is None else returns_lib.normalise(value, reference)
