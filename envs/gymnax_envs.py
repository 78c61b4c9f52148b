"""gymnax environments (MinAtar, discrete classic control) behind our interface.

One wrapper class, ``GymnaxEnv``, serves every game.  Its ``reset``/``step``
delegate to gymnax's own jitted ``reset``/``step`` (gymnax 1.0.1 auto-resets and
returns ``obs, state, reward, terminated, truncated, info``, where
``terminated`` is the natural end of the game and ``truncated`` is
``state.time >= params.max_steps_in_episode``, *also* set on a terminal step at
the limit).  We report ``truncated & ~terminated`` so that exactly one of the two
flags explains an episode end, as in ``envs.base``.

Names (short, as the meta-test reports use them):

* MinAtar (gymnax defaults: no sticky actions, minimal action set, float32
  ``[10, 10, C]`` binary images, 1000-step cap; Freeway 2500):
  ``Asterix``, ``Breakout``, ``Freeway``, ``Seaquest``, ``SpaceInvaders``.
  Seaquest is included: gymnax 1.0.1 runs it (reset, jitted vmapped scans).
* Classic control with discrete actions (``kind == "vector"``): ``CartPole``,
  ``Acrobot``, ``MountainCar``.  Pendulum and continuous MountainCar have
  continuous actions and are not wrapped.

The gymnax ``EnvParams`` are the per-lifetime params (``sample_params`` returns
gymnax's defaults; there is nothing to randomise).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs.base import Environment, ObsSpec, StepOutput


@dataclasses.dataclass(frozen=True)
class GymnaxSpec:
  """Which gymnax id a short name wraps.

  Attributes:
    gymnax_id: id for ``gymnax.make`` [ported: gymnax 1.0.1 registry].
    kind: observation kind, ``"image"`` or ``"vector"``.
  """
  gymnax_id: str
  kind: str


MINATAR = {
    "Asterix": GymnaxSpec("Asterix-MinAtar", "image"),
    "Breakout": GymnaxSpec("Breakout-MinAtar", "image"),
    "Freeway": GymnaxSpec("Freeway-MinAtar", "image"),
    "Seaquest": GymnaxSpec("Seaquest-MinAtar", "image"),
    "SpaceInvaders": GymnaxSpec("SpaceInvaders-MinAtar", "image"),
}
CLASSIC = {
    "CartPole": GymnaxSpec("CartPole-v1", "vector"),
    "Acrobot": GymnaxSpec("Acrobot-v1", "vector"),
    "MountainCar": GymnaxSpec("MountainCar-v0", "vector"),
}
GYMNAX_SPECS = {**MINATAR, **CLASSIC}


class GymnaxEnv(Environment):
  """Our ``Environment`` around one gymnax environment.

  Args:
    spec: gymnax id and observation kind.
    name: registry name.
    **gymnax_kwargs: passed to ``gymnax.make`` (e.g. ``use_minimal_action_set``).
  """

  def __init__(self, spec: GymnaxSpec, name: str = "gymnax", **gymnax_kwargs):
    self.spec = spec
    self.name = name
    # Imported here: importing gymnax starts a JAX backend, which must wait for
    # jax.distributed.initialize in multi-host runs (and slows every CLI start).
    import gymnax
    self.gymnax_env, self._default_params = gymnax.make(spec.gymnax_id, **gymnax_kwargs)
    obs, _ = self.gymnax_env.reset(jax.random.PRNGKey(0), self._default_params)
    self._obs_shape = tuple(obs.shape)
    self._obs_dtype = np.dtype(obs.dtype)
    space = self.gymnax_env.observation_space(self._default_params)
    self.obs_low = np.broadcast_to(np.asarray(space.low, self._obs_dtype), self._obs_shape)
    self.obs_high = np.broadcast_to(np.asarray(space.high, self._obs_dtype), self._obs_shape)

  @property
  def num_actions(self) -> int:
    return int(self.gymnax_env.action_space(self._default_params).n)

  @property
  def obs_spec(self) -> ObsSpec:
    return ObsSpec(shape=self._obs_shape, dtype=self._obs_dtype, kind=self.spec.kind)

  @property
  def max_episode_steps(self) -> int:
    return int(self._default_params.max_steps_in_episode)

  def default_params(self) -> Any:
    return self._default_params

  # The abstract hooks, used by ``step_no_reset`` and by anyone stepping by hand.
  def reset_env(self, key, params):
    return self.gymnax_env.reset_env(key, params)[1]

  def step_env(self, key, state, action, params):
    _, state, reward, terminated, _ = self.gymnax_env.step_env(key, state, action, params)
    return state, reward, terminated

  def get_obs(self, state, params):
    return self.gymnax_env.get_obs(state, params)

  # Public API: delegate to gymnax's own (auto-resetting) functions.
  def reset(self, key, params):
    return self.gymnax_env.reset(key, params)

  def step(self, key, state, action, params) -> StepOutput:
    obs, state, reward, terminated, truncated, _ = self.gymnax_env.step(key, state, action, params)
    terminated = jnp.asarray(terminated, jnp.bool_)
    return StepOutput(obs=obs, state=state, reward=jnp.asarray(reward, jnp.float32),
                      terminated=terminated,
                      truncated=jnp.logical_and(truncated, jnp.logical_not(terminated)))
