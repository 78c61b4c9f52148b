"""Shared containers.  Arrays are time-major: ``[T, B, ...]`` for per-step data,
``[T+1, B, ...]`` where the bootstrap observation is included."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Rollout(NamedTuple):
  """A batch of trajectories collected by one agent.

  Attributes:
    obs: ``[T+1, B, *obs_shape]`` observations; ``obs[t+1]`` follows ``actions[t]``.
      After a step with ``done[t]`` the environment auto-reset, so ``obs[t+1]``
      is the first observation of the next episode.
    actions: ``[T, B]`` int32.
    rewards: ``[T, B]`` float32.
    terminated: ``[T, B]`` bool, the episode ended in a terminal state at ``t``.
    truncated: ``[T, B]`` bool, the episode was cut by the time limit at ``t``.
  """
  obs: jax.Array
  actions: jax.Array
  rewards: jax.Array
  terminated: jax.Array
  truncated: jax.Array

  @property
  def done(self) -> jax.Array:
    """``[T, B]`` float32: 1 where an episode ended at ``t`` (either way)."""
    return jnp.logical_or(self.terminated, self.truncated).astype(jnp.float32)

  @property
  def bootstrap_mask(self) -> jax.Array:
    """``[T, B]`` float32: 1 where ``obs[t+1]`` is the true successor of ``t``."""
    return 1.0 - self.done


class EpisodeStats(NamedTuple):
  """Sums over finished episodes of a rollout (per agent).

  Attributes:
    return_sum: ``[]`` sum of the returns of the episodes that finished.
    count: ``[]`` number of episodes that finished.
  """
  return_sum: jax.Array
  count: jax.Array


class RuleOutputs(NamedTuple):
  """The targets an update rule emits for every step of a rollout.

  For LPG: ``pi_hat`` ``[T, B]`` (unbounded policy target) and ``y_hat``
  ``[T, B, m]`` (a distribution over m).  Hand-designed rules may leave
  ``y_hat`` as ``None`` and add their own entries to ``extras``.
  """
  pi_hat: jax.Array
  y_hat: jax.Array | None = None
  extras: dict | None = None


class AgentOutputs(NamedTuple):
  """Agent network outputs for ``[..]`` leading dims.

  Attributes:
    logits: ``[..., A]`` policy logits.
    heads: dict of the extra heads the update rule asked for, e.g.
      ``{"y": [..., m]}`` (logits of y) for LPG or ``{"v": [...]}`` for A2C.
  """
  logits: jax.Array
  heads: dict
