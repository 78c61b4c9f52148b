"""Collecting trajectories: one compiled ``lax.scan`` over steps, ``vmap`` over envs."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from envs.base import Environment
from lpg.types import EpisodeStats, PyTree, Rollout


class EnvCarry(NamedTuple):
  """The batch of environments an agent acts in, carried across rollouts.

  Attributes:
    state: env states, leading dim ``[B]``.
    obs: ``[B, *obs_shape]`` current observations.
    episode_return: ``[B]`` return so far of the running episodes.
  """
  state: PyTree
  obs: jax.Array
  episode_return: jax.Array


def reset_envs(env: Environment, env_params: PyTree, key: jax.Array, num_envs: int) -> EnvCarry:
  """Resets ``num_envs`` environments sharing one lifetime's ``env_params``."""
  obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), env_params)
  return EnvCarry(state=state, obs=obs, episode_return=jnp.zeros((num_envs,), jnp.float32))


def unroll(env: Environment, env_params: PyTree, logits_fn: Callable[[jax.Array], jax.Array],
           carry: EnvCarry, key: jax.Array, num_steps: int) -> tuple[Rollout, EnvCarry, EpisodeStats]:
  """Acts for ``num_steps`` steps in every environment of ``carry``.

  Args:
    env: the environment (static).
    env_params: this lifetime's parameters, shared by the ``B`` environments.
    logits_fn: ``obs[B, *obs_shape] -> logits[B, A]`` (the agent's policy; its
      output is treated as data, no gradient flows through sampling).
    carry: ``EnvCarry`` with leading dim ``B``.
    key: PRNG key.
    num_steps: ``T``.

  Returns:
    ``(rollout, carry, stats)``: the ``Rollout`` (``[T(+1), B, ...]``), the carry
    to continue from, and ``EpisodeStats`` of the episodes that ended.
  """
  num_envs = carry.obs.shape[0]
  step_fn = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def body(c: EnvCarry, k):
    k_act, k_env = jax.random.split(k)
    logits = jax.lax.stop_gradient(logits_fn(c.obs))
    action = jax.random.categorical(k_act, logits).astype(jnp.int32)
    out = step_fn(jax.random.split(k_env, num_envs), c.state, action, env_params)
    ep_ret = c.episode_return + out.reward
    done = jnp.logical_or(out.terminated, out.truncated)
    finished = jnp.where(done, ep_ret, 0.0)
    new_c = EnvCarry(state=out.state, obs=out.obs, episode_return=jnp.where(done, 0.0, ep_ret))
    return new_c, (c.obs, action, out.reward, out.terminated, out.truncated, finished, done)

  carry, (obs, act, rew, term, trunc, finished, done) = jax.lax.scan(
      body, carry, jax.random.split(key, num_steps))
  rollout = Rollout(obs=jnp.concatenate([obs, carry.obs[None]], axis=0), actions=act,
                    rewards=rew, terminated=term, truncated=trunc)
  stats = EpisodeStats(return_sum=finished.sum(), count=done.sum().astype(jnp.float32))
  return rollout, carry, stats
