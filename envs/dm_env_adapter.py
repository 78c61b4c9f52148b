"""A thin ``dm_env.Environment`` around any registered environment.

``make_dm_env(name, seed=0, **kwargs)`` draws the lifetime params from
``seed`` (``env.sample_params``), jits ``reset`` and ``step_no_reset`` once,
and keeps the key and state on the Python side.  A LAST time step shows the
observation the episode ended in; the next ``step`` call starts a new episode
(dm_env semantics), ignoring its action.  Rewards are float32 scalars,
discounts float32 (0 after a termination, 1 after a truncation).
"""
from __future__ import annotations

import weakref

import dm_env
import jax
import numpy as np
from dm_env import specs

from envs.base import Environment
from envs.registry import make


# Compiled functions per environment object, so that several adapters of one
# environment (e.g. one per test, or per seed) compile once.  A cache only: it
# holds no state, and entries vanish with their environment.
_JIT_CACHE: "weakref.WeakKeyDictionary[Environment, tuple]" = weakref.WeakKeyDictionary()


def _jitted(env: Environment):
  if env not in _JIT_CACHE:
    _JIT_CACHE[env] = (jax.jit(env.reset), jax.jit(env.step_no_reset))
  return _JIT_CACHE[env]


class DmEnvAdapter(dm_env.Environment):
  """dm_env view of one environment instance.

  Args:
    env: one of our functional environments.
    seed: seeds the lifetime params and every later random draw.
  """

  def __init__(self, env: Environment, seed: int = 0):
    self.env = env
    key_params, self._key = jax.random.split(jax.random.PRNGKey(seed))
    self.params = env.sample_params(key_params)
    self._reset_fn, self._step_fn = _jitted(env)
    self._state = None
    self._needs_reset = True

  def _next_key(self):
    self._key, key = jax.random.split(self._key)
    return key

  def reset(self) -> dm_env.TimeStep:
    obs, self._state = self._reset_fn(self._next_key(), self.params)
    self._needs_reset = False
    return dm_env.restart(self._to_numpy_obs(obs))

  def step(self, action) -> dm_env.TimeStep:
    if self._needs_reset:
      return self.reset()
    out = self._step_fn(self._next_key(), self._state, np.asarray(action, np.int32), self.params)
    self._state = out.state
    obs = self._to_numpy_obs(out.obs)
    reward = np.float32(out.reward)
    if bool(out.terminated):
      self._needs_reset = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, np.float32(0.0), obs)
    if bool(out.truncated):
      self._needs_reset = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, np.float32(1.0), obs)
    return dm_env.TimeStep(dm_env.StepType.MID, reward, np.float32(1.0), obs)

  def _to_numpy_obs(self, obs):
    spec = self.env.obs_spec
    return np.asarray(obs, dtype=spec.dtype)

  def action_spec(self):
    return specs.DiscreteArray(self.env.num_actions, dtype=np.int32, name="action")

  def observation_spec(self):
    spec = self.env.obs_spec
    dtype = np.dtype(spec.dtype)
    if spec.kind == "index":
      return specs.DiscreteArray(spec.num_values, dtype=dtype, name="observation")
    low = getattr(self.env, "obs_low", None)
    high = getattr(self.env, "obs_high", None)
    if low is not None and high is not None:
      return specs.BoundedArray(spec.shape, dtype, low, high, name="observation")
    if spec.kind == "image" or np.issubdtype(dtype, np.integer):
      return specs.BoundedArray(spec.shape, dtype, 0, 1, name="observation")
    return specs.Array(spec.shape, dtype, name="observation")

  def reward_spec(self):
    return specs.Array((), np.float32, name="reward")

  def discount_spec(self):
    return specs.BoundedArray((), np.float32, 0.0, 1.0, name="discount")


def make_dm_env(name: str, seed: int = 0, **kwargs) -> DmEnvAdapter:
  """``DmEnvAdapter(envs.make(name, **kwargs), seed)``."""
  return DmEnvAdapter(make(name, **kwargs), seed=seed)
