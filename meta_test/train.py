"""Training a fresh agent with a frozen rule: one compiled function per run.

``make_train(...)`` returns ``train(key) -> (TrainState, UpdateMetrics)``:
agent init, then a ``lax.scan`` over ``num_updates`` updates, each one
``unroll`` (``rollout_len`` steps x ``num_envs`` envs) followed by
``lpg.update.inner_update``.  Seeds are a ``jax.vmap``:
``jax.jit(jax.vmap(train))(keys)``.

For progress bars, ``make_train_fns`` exposes the same run as ``init(key)``
plus ``run_chunk(state, offset) -> (state, metrics)`` scanning ``chunk``
updates; ``run_seeds`` jits the vmapped pair and loops chunks in Python (one
host call per chunk, never per step).  Updates past ``num_updates`` in the last
chunk are skipped with a ``lax.cond`` (its predicate is not batched over seeds,
so it stays a real branch under ``vmap``) and trimmed from the metrics.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.base import Environment
from lpg.networks import AgentConfig, AgentNetwork, make_agent_network
from lpg.rollout import EnvCarry, reset_envs, unroll
from lpg.rule import InnerHypers, UpdateRule, entropy_from_logits
from lpg.types import PyTree
from lpg.update import OptimizerConfig, inner_update, make_optimizer


class TrainState(NamedTuple):
  """What one seed carries between updates (leading ``[S]`` dim when vmapped)."""
  agent_params: PyTree
  opt_state: PyTree
  env_params: PyTree
  env: EnvCarry
  key: jax.Array


class UpdateMetrics(NamedTuple):
  """Per-update metrics; ``[U]`` per seed (``[S, U]`` vmapped).

  Attributes:
    return_sum: sum of the returns of the episodes that ended in the update.
    episodes: number of episodes that ended in the update.
    reward_sum: sum of all rewards of the update's rollout (``T * B`` steps).
    loss: the rule's agent loss.
    entropy: mean policy entropy over the rollout.
  """
  return_sum: jax.Array
  episodes: jax.Array
  reward_sum: jax.Array
  loss: jax.Array
  entropy: jax.Array


class TrainFns(NamedTuple):
  """Pure pieces of one run (per seed; vmap and jit them).

  ``init(key) -> TrainState``; ``run_chunk(state, offset) -> (state,
  UpdateMetrics [chunk])`` does updates ``offset .. offset+chunk-1`` (those
  ``>= num_updates`` are skipped); ``train(key)`` is the whole run.
  """
  init: Callable
  run_chunk: Callable
  train: Callable
  net: AgentNetwork
  chunk: int
  num_updates: int
  steps_per_update: int


def make_train_fns(env: Environment, rule: UpdateRule, rule_params: PyTree,
                   agent_config: AgentConfig, optimizer_config: OptimizerConfig,
                   hypers: InnerHypers, num_envs: int, rollout_len: int, num_updates: int,
                   chunk: int | None = None, env_params: PyTree | None = None) -> TrainFns:
  """Builds ``init``, ``run_chunk`` and ``train`` for one (env, rule) pair.

  Args:
    env: a JAX-native environment (static).
    rule: the update rule (LPG or a baseline); ``rule_params`` are its frozen
      parameters (constants of the compiled function).
    agent_config, optimizer_config, hypers: the agent and its optimiser.
    num_envs: ``B`` parallel environments per seed.
    rollout_len: ``T`` steps per environment per update.
    num_updates: ``U`` updates; a run takes ``U * T * B`` environment steps.
    chunk: updates per ``run_chunk`` call (default: all of them).
    env_params: fixed task parameters; default: ``env.sample_params`` drawn from
      each seed's key (a fresh task per seed, as a new lifetime).
  """
  for name, value in (("num_envs", num_envs), ("rollout_len", rollout_len),
                      ("num_updates", num_updates)):
    if int(value) < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  chunk = int(num_updates if chunk is None else min(max(int(chunk), 1), num_updates))
  net = make_agent_network(agent_config, env.obs_spec, env.num_actions, rule.head_sizes())
  optimizer = make_optimizer(optimizer_config)

  def init(key: jax.Array) -> TrainState:
    k_env, k_reset, k_agent, k_run = jax.random.split(key, 4)
    ep = env.sample_params(k_env) if env_params is None else env_params
    params = net.init(k_agent)
    return TrainState(agent_params=params, opt_state=optimizer.init(params), env_params=ep,
                      env=reset_envs(env, ep, k_reset, num_envs), key=k_run)

  def update(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
    key, k_roll = jax.random.split(state.key)
    params = state.agent_params
    rollout, carry, stats = unroll(env, state.env_params, lambda o: net.apply(params, o).logits,
                                   state.env, k_roll, rollout_len)
    res = inner_update(rule, rule_params, net, optimizer, params, state.opt_state, rollout, hypers)
    ent = jnp.mean(entropy_from_logits(net.apply(params, rollout.obs[:-1]).logits))
    metrics = UpdateMetrics(return_sum=stats.return_sum, episodes=stats.count,
                            reward_sum=rollout.rewards.sum(), loss=res.metrics["loss"],
                            entropy=ent)
    return TrainState(res.params, res.opt_state, state.env_params, carry, key), metrics

  def skip(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
    z = jnp.zeros((), jnp.float32)
    return state, UpdateMetrics(z, z, z, z, z)

  def run_chunk(state: TrainState, offset: jax.Array) -> tuple[TrainState, UpdateMetrics]:
    def body(s, i):
      if chunk * math.ceil(num_updates / chunk) == num_updates:
        return update(s)
      return jax.lax.cond(i < num_updates, update, skip, s)
    return jax.lax.scan(body, state, offset + jnp.arange(chunk))

  def train(key: jax.Array) -> tuple[TrainState, UpdateMetrics]:
    def body(s, _):
      return update(s)
    return jax.lax.scan(body, init(key), None, length=num_updates)

  return TrainFns(init=init, run_chunk=run_chunk, train=train, net=net, chunk=chunk,
                  num_updates=int(num_updates), steps_per_update=int(num_envs * rollout_len))


def make_train(env: Environment, rule: UpdateRule, rule_params: PyTree,
               agent_config: AgentConfig, optimizer_config: OptimizerConfig,
               hypers: InnerHypers, num_envs: int, rollout_len: int, num_updates: int,
               env_params: PyTree | None = None) -> Callable:
  """``train(key) -> (TrainState, UpdateMetrics [U])``, the whole run in one function.

  Use ``jax.jit(jax.vmap(train))(keys)`` for ``S`` seeds at once (metrics
  ``[S, U]``).  See ``make_train_fns`` for the arguments.
  """
  return make_train_fns(env, rule, rule_params, agent_config, optimizer_config, hypers,
                        num_envs, rollout_len, num_updates, env_params=env_params).train


@dataclasses.dataclass(frozen=True)
class RunResult:
  """Host-side result of ``run_seeds``.

  Attributes:
    metrics: ``UpdateMetrics`` of numpy arrays ``[S, U]``.
    state: final ``TrainState`` (``[S]`` leading dims).
    chunk_s: wall seconds of each chunk call (the first includes compilation).
    chunk_updates: updates done by each chunk call.
    run_s: wall seconds of the whole run (init and compilation included).
    steps_per_update: ``T * B`` environment steps per seed per update.
    seeds_per_chunk: seeds each chunk call advances (all ``S`` for the
      vmapped path, 1 for the host loop, which runs seeds one after another).
  """
  metrics: UpdateMetrics
  state: TrainState
  chunk_s: tuple[float, ...]
  chunk_updates: tuple[int, ...]
  run_s: float
  steps_per_update: int
  seeds_per_chunk: int

  @property
  def num_seeds(self) -> int:
    return int(self.metrics.episodes.shape[0])

  @property
  def env_steps(self) -> int:
    """Environment steps over all seeds."""
    return self.seeds_per_chunk * int(sum(self.chunk_updates)) * self.steps_per_update

  @property
  def steps_per_s(self) -> float:
    """Environment steps per second over all seeds, compilation excluded when
    there is more than one chunk (the first chunk is then left out)."""
    if len(self.chunk_s) > 1:
      updates, secs = sum(self.chunk_updates[1:]), sum(self.chunk_s[1:])
    else:
      updates, secs = sum(self.chunk_updates), self.run_s
    return self.seeds_per_chunk * updates * self.steps_per_update / max(secs, 1e-9)


def run_seeds(fns: TrainFns, keys: jax.Array, progress: Callable[[int], None] | None = None
              ) -> RunResult:
  """Runs ``fns`` for every key in ``keys`` ``[S, 2]``, chunk by chunk.

  Args:
    fns: from ``make_train_fns``.
    keys: one PRNG key per seed.
    progress: called with the number of updates done after each chunk (e.g. a
      tqdm bar's ``update``).
  """
  init = jax.jit(jax.vmap(fns.init))
  run_chunk = jax.jit(jax.vmap(fns.run_chunk, in_axes=(0, None)))
  t0 = time.perf_counter()
  state = init(keys)
  outs, durations, counts = [], [], []
  for offset in range(0, fns.num_updates, fns.chunk):
    t = time.perf_counter()
    state, m = run_chunk(state, jnp.asarray(offset, jnp.int32))
    m = jax.tree_util.tree_map(np.asarray, m)  # blocks: one host transfer per chunk
    durations.append(time.perf_counter() - t)
    counts.append(min(fns.chunk, fns.num_updates - offset))
    outs.append(m)
    if progress is not None:
      progress(counts[-1])
  # The metrics' own NamedTuple (``UpdateMetrics`` or an extension of it, e.g. mgrl's).
  metrics = type(outs[0])(*[np.concatenate(parts, axis=1)[:, :fns.num_updates]
                            for parts in zip(*outs)])
  return RunResult(metrics=metrics, state=state, chunk_s=tuple(durations),
                   chunk_updates=tuple(counts), run_s=time.perf_counter() - t0,
                   steps_per_update=fns.steps_per_update, seeds_per_chunk=int(keys.shape[0]))
