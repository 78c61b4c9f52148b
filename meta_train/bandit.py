"""Hyperparameter balancing: a bandit per training environment (LPG_SPEC section 4).

Each environment has ``A`` arms (pairs of inner learning rate and alpha_y).  When
a lifetime finishes, its arm is credited with the lifetime's final normalised
return.  New lifetimes draw an arm from a softmax (temperature ``tau``) over
``score = mean return + bonus / sqrt(trials)``; arms never tried score highest.
All functions are pure array functions, compiled inside the meta-update.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BanditState(NamedTuple):
  """Statistics of every arm.

  Attributes:
    value: ``[E, A]`` moving average of finished lifetimes' normalised returns.
    trials: ``[E, A]`` number of finished lifetimes credited to the arm.
  """
  value: jax.Array
  trials: jax.Array


def init(num_envs: int, num_arms: int) -> BanditState:
  return BanditState(value=jnp.zeros((num_envs, num_arms), jnp.float32),
                     trials=jnp.zeros((num_envs, num_arms), jnp.float32))


def probabilities(state: BanditState, temperature: float, bonus: float) -> jax.Array:
  """``[E, A]`` probability of drawing each arm for a new lifetime."""
  score = state.value + bonus / jnp.sqrt(jnp.maximum(state.trials, 1.0))
  score = jnp.where(state.trials > 0, score, jnp.max(score, axis=-1, keepdims=True) + 1.0)
  return jax.nn.softmax(score / temperature, axis=-1)


def sample(key: jax.Array, state: BanditState, env_index: int, num: int,
           temperature: float, bonus: float) -> jax.Array:
  """``[num]`` int32 arms for new lifetimes on environment ``env_index``."""
  logits = jnp.log(probabilities(state, temperature, bonus)[env_index] + 1e-30)
  return jax.random.categorical(key, logits, shape=(num,)).astype(jnp.int32)


def update(state: BanditState, env_index: int, arms: jax.Array, returns: jax.Array,
           mask: jax.Array, window: int) -> BanditState:
  """Credits finished lifetimes of one environment.

  Args:
    arms: ``[N]`` arm of each lifetime.
    returns: ``[N]`` its final normalised return.
    mask: ``[N]`` bool, which lifetimes finished (and count).
    window: the moving average weighs a new result by ``1/window`` (the first
      result of an arm replaces its zero start).
  """
  num_arms = state.value.shape[1]
  onehot = jax.nn.one_hot(arms, num_arms) * mask[:, None]          # [N, A]
  count = onehot.sum(0)                                            # [A]
  total = (onehot * returns[:, None]).sum(0)
  mean_new = total / jnp.maximum(count, 1.0)
  old_v, old_n = state.value[env_index], state.trials[env_index]
  beta = jnp.where(old_n > 0, jnp.minimum(count / window, 1.0), 1.0)
  value = jnp.where(count > 0, (1 - beta) * old_v + beta * mean_new, old_v)
  return BanditState(value=state.value.at[env_index].set(value),
                     trials=state.trials.at[env_index].set(old_n + count))
