"""The functional environment interface shared by every environment.

Every environment is a set of pure functions of ``(key, state, action, params)``
in the manner of gymnax, so that it can be ``jax.vmap``-ed over keys *and* over
per-lifetime parameters and ``jax.lax.scan``-ed over steps:

* ``sample_params(key) -> params``: what is drawn once per lifetime (object
  positions of a tabular world, the chain length N, ...).  ``default_params()``
  is a fixed, documented draw.
* ``reset(key, params) -> (obs, state)``.
* ``step(key, state, action, params) -> StepOutput``, with **auto-reset**: when
  the episode ends (termination or truncation at ``max_episode_steps``) the
  returned ``obs``/``state`` already belong to a fresh episode, while
  ``reward``/``terminated``/``truncated`` describe the transition that ended.

Subclasses implement ``reset_env``, ``step_env`` and ``get_obs``; the base class
adds the time limit and the branch-free auto-reset (``jnp.where`` on ``done``).
The environment object itself holds only static facts (sizes, layouts, action
set), never arrays that change per lifetime.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ObsSpec:
  """What an observation is.

  Attributes:
    shape: shape of one observation (``()`` for an integer state index).
    dtype: numpy dtype of one observation.
    num_values: for ``kind == "index"`` the number of distinct states (the
      observation is an ``int32`` in ``[0, num_values)``, equivalent to a
      one-hot vector of that length); ``None`` otherwise.
    kind: ``"index"`` (tabular state index), ``"vector"`` (flat features),
      or ``"image"`` (``[H, W, C]`` channels-last binary or float image).
  """
  shape: tuple[int, ...]
  dtype: Any
  kind: str
  num_values: int | None = None

  def __post_init__(self):
    if self.kind not in ("index", "vector", "image"):
      raise ValueError(f"ObsSpec.kind must be index, vector or image, got {self.kind!r}")
    if self.kind == "index" and not self.num_values:
      raise ValueError("an index observation needs num_values")


class StepOutput(NamedTuple):
  """Result of one environment step (shapes for a single environment).

  Attributes:
    obs: next observation; the first observation of a new episode if ``done``.
    state: next state (likewise already reset if ``done``).
    reward: ``[]`` float32 reward of this transition.
    terminated: ``[]`` bool, the episode ended in a terminal state (no
      bootstrapping past it).
    truncated: ``[]`` bool, the episode was cut by the time limit (not terminal).
  """
  obs: jax.Array
  state: PyTree
  reward: jax.Array
  terminated: jax.Array
  truncated: jax.Array

  @property
  def done(self) -> jax.Array:
    return jnp.logical_or(self.terminated, self.truncated)


class Environment(abc.ABC):
  """Base class of every JAX-native environment of the project.

  Subclasses set ``name``, ``num_actions``, ``obs_spec`` and
  ``max_episode_steps`` and implement ``reset_env``, ``step_env``, ``get_obs``
  and ``default_params``.  States must be pytrees with an integer ``time``
  field counting steps in the current episode.
  """

  name: str = "env"

  @property
  @abc.abstractmethod
  def num_actions(self) -> int:
    """Number of discrete actions."""

  @property
  @abc.abstractmethod
  def obs_spec(self) -> ObsSpec:
    """Shape, dtype and kind of one observation."""

  @property
  @abc.abstractmethod
  def max_episode_steps(self) -> int:
    """Episodes are truncated after this many steps."""

  @abc.abstractmethod
  def default_params(self) -> PyTree:
    """A fixed, documented parameter set (no randomness)."""

  def sample_params(self, key: jax.Array) -> PyTree:
    """Draws what is fixed for one lifetime; defaults to ``default_params``."""
    del key
    return self.default_params()

  @abc.abstractmethod
  def reset_env(self, key: jax.Array, params: PyTree) -> PyTree:
    """Returns the first state of a new episode."""

  @abc.abstractmethod
  def step_env(self, key: jax.Array, state: PyTree, action: jax.Array,
               params: PyTree) -> tuple[PyTree, jax.Array, jax.Array]:
    """One transition without time limit or reset: ``(state, reward, terminated)``.

    The returned state must have ``time`` incremented by one.
    """

  @abc.abstractmethod
  def get_obs(self, state: PyTree, params: PyTree) -> jax.Array:
    """Observation of ``state`` (see ``obs_spec``)."""

  # ---------------------------------------------------------------- public API
  def reset(self, key: jax.Array, params: PyTree) -> tuple[jax.Array, PyTree]:
    state = self.reset_env(key, params)
    return self.get_obs(state, params), state

  def step(self, key: jax.Array, state: PyTree, action: jax.Array,
           params: PyTree) -> StepOutput:
    key_step, key_reset = jax.random.split(key)
    next_state, reward, terminated = self.step_env(key_step, state, action, params)
    return self.auto_reset(next_state, reward, terminated, self.reset_env(key_reset, params),
                           params)

  def auto_reset(self, next_state: PyTree, reward: jax.Array, terminated: jax.Array,
                 reset_state: PyTree, params: PyTree) -> StepOutput:
    """The time limit and the branch-free auto-reset that ``step`` applies.

    ``next_state``/``reward``/``terminated`` come from ``step_env``;
    ``reset_state`` is a fresh episode's first state, taken where the
    transition ended the episode (``jnp.where`` on ``done``, leaf by leaf).
    Subclasses that draw their random numbers differently (one call for the
    step and the reset) reuse it.
    """
    terminated, truncated = self._time_limit(next_state, terminated)
    done = jnp.logical_or(terminated, truncated)
    state_out = jax.tree_util.tree_map(
        lambda r, n: jnp.where(done, r, n), reset_state, next_state)
    return StepOutput(obs=self.get_obs(state_out, params), state=state_out,
                      reward=jnp.asarray(reward, jnp.float32),
                      terminated=terminated, truncated=truncated)

  def _time_limit(self, next_state: PyTree, terminated: jax.Array):
    """``(terminated, truncated)`` ``[]`` bool: truncation at ``max_episode_steps``."""
    terminated = jnp.asarray(terminated, jnp.bool_)
    truncated = jnp.logical_and(next_state.time >= self.max_episode_steps,
                                jnp.logical_not(terminated))
    return terminated, truncated

  def step_no_reset(self, key: jax.Array, state: PyTree, action: jax.Array,
                    params: PyTree) -> StepOutput:
    """One step with the time limit but *without* auto-reset.

    ``obs``/``state`` are those the transition reached, also when it ended the
    episode (what a dm_env LAST time step shows).  The caller resets.
    """
    next_state, reward, terminated = self.step_env(key, state, action, params)
    terminated, truncated = self._time_limit(next_state, terminated)
    return StepOutput(obs=self.get_obs(next_state, params), state=next_state,
                      reward=jnp.asarray(reward, jnp.float32),
                      terminated=terminated, truncated=truncated)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, num_actions={self.num_actions}, "
            f"obs={self.obs_spec}, max_episode_steps={self.max_episode_steps})")
