"""Training fresh agents with a frozen rule: one ``make_train`` for every meta-test run.

``make_train(env, config, rule, rule_params)`` returns ``TrainFns``: ``init(key) ->
RunState``, ``run_chunk(state, offset) -> (state, UpdateMetrics [chunk])`` and
``train(key) -> (RunState, UpdateMetrics [U])``, the whole run (agent init, then a
``lax.scan`` over ``U`` updates, each one ``lpg.lifetime.make_agent_step``'s step: ``unroll``
of ``T`` steps x ``B`` envs followed by ``lpg.update.inner_update``, as in a lifetime).
Seeds are a ``jax.vmap``: ``jax.jit(jax.vmap(fns.train))(keys)``.

An optional ``MetaHook`` adds a meta-step to every update (meta-gradient RL,
``meta_test.mgrl``): it runs after the rollout is collected and before the agent's update
on it, carries its own state in ``RunState.meta``, chooses the rule parameters of the
update and may condition the agent network on its meta-parameters.

For progress bars ``run_seeds`` jits the vmapped ``init`` / ``run_chunk`` pair and loops
chunks in Python (one host call per chunk, never per step).  Updates past ``U`` in the
last chunk are skipped with a ``lax.cond`` (its predicate is not batched over seeds, so it
stays a real branch under ``vmap``) and trimmed from the metrics.  An algorithm with a
training loop of its own joins through ``whole_run_fns``.
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
from lpg.lifetime import make_agent_step
from lpg.networks import AgentConfig, AgentNetwork, make_agent_network
from lpg.rollout import EnvCarry, reset_envs
from lpg.rule import InnerHypers, UpdateRule, make_hypers, make_progress
from lpg.update import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One meta-test run: agent, optimiser, inner hyperparameters and batch shape.

  Attributes:
    agent: the agent network.
    optimizer: the inner optimiser (its step size is ``learning_rate``).
    learning_rate: inner step size.
    alpha_y: weight of LPG's y term [ported: 0.5].
    gamma: discount given to the rule [ported: 0.99].
    num_envs: ``B`` parallel environments per seed.
    rollout_len: ``T`` steps per environment per update.
    num_updates: ``U`` updates; a run takes ``U * T * B`` environment steps per seed.
    chunk: updates per ``run_chunk`` call (``None``: all of them).
    anneal_lr: decay the step size linearly from ``learning_rate`` towards 0 over the
      ``U`` updates (update ``i`` uses ``learning_rate * (1 - i / U)``) [chosen: False;
      True for the A2C vector defaults, as sb3 / purejaxrl].
  """
  agent: AgentConfig
  optimizer: OptimizerConfig
  learning_rate: float
  alpha_y: float = 0.5
  gamma: float = 0.99
  num_envs: int = 64
  rollout_len: int = 20
  num_updates: int = 1
  chunk: int | None = None
  anneal_lr: bool = False

  def __post_init__(self):
    for name in ("num_envs", "rollout_len", "num_updates"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not math.isfinite(self.learning_rate):
      raise ValueError(f"learning_rate must be finite, got {self.learning_rate}")

  @property
  def hypers(self) -> InnerHypers:
    return make_hypers(self.learning_rate, alpha_y=self.alpha_y, gamma=self.gamma)

  @property
  def steps_per_update(self) -> int:
    return int(self.num_envs * self.rollout_len)

  def hypers_at(self, i) -> InnerHypers:
    """``hypers`` of update ``i`` (0-based; the annealed step size with ``anneal_lr``)."""
    h = self.hypers
    if not self.anneal_lr:
      return h
    frac = 1.0 - jnp.asarray(i, jnp.float32) / float(self.num_updates)
    return h._replace(learning_rate=h.learning_rate * frac)

  @property
  def chunk_size(self) -> int:
    u = int(self.num_updates)
    return u if self.chunk is None else min(max(int(self.chunk), 1), u)


class RunState(NamedTuple):
  """What one seed carries between updates (leading ``[S]`` dim when vmapped).

  ``meta`` is the ``MetaHook``'s state (``()`` without a hook).
  """
  agent_params: PyTree
  opt_state: PyTree
  env_params: PyTree
  env: EnvCarry
  key: jax.Array
  meta: PyTree = ()


class UpdateMetrics(NamedTuple):
  """Per-update metrics; ``[U]`` per seed (``[S, U]`` vmapped).

  Attributes:
    return_sum: sum of the returns of the episodes that ended in the update.
    episodes: number of episodes that ended in the update.
    reward_sum: sum of all rewards of the update's rollout (``T * B`` steps).
    loss: the rule's agent loss.
    entropy: mean policy entropy over the rollout.
    meta_loss: the loss scored by the update's meta-step (0 without one).
    meta_params: name -> value of meta-parameters learned online, as used by the
      update (e.g. mgrl's ``gamma``, ``lambda``); empty without a meta-step.
  """
  return_sum: jax.Array
  episodes: jax.Array
  reward_sum: jax.Array
  loss: jax.Array
  entropy: jax.Array
  meta_loss: jax.Array
  meta_params: dict


class MetaOut(NamedTuple):
  """What a meta-step hands to the update: the rule's parameters and what to log."""
  rule_params: PyTree
  loss: jax.Array
  params: dict


class MetaHook(NamedTuple):
  """A per-update meta-step for ``make_train`` (pure functions, per seed).

  Attributes:
    net: the agent network at the initial meta-state; its ``init`` makes the agent.
    net_at: ``meta_state -> AgentNetwork``, the agent as conditioned by ``meta_state``.
    init: ``(agent_params, opt_state, env: EnvCarry) -> meta_state``.
    step: ``(meta_state, i, agent_params, opt_state, rollout) -> (meta_state, MetaOut)``:
      update ``i``'s meta-step on its freshly collected ``rollout`` ``[T(+1), B]``,
      before the agent (``agent_params``, ``opt_state``) is updated on it.
  """
  net: AgentNetwork
  net_at: Callable
  init: Callable
  step: Callable


class TrainFns(NamedTuple):
  """Pure pieces of one run (per seed; vmap and jit them).

  ``init(key) -> state``; ``run_chunk(state, offset) -> (state, UpdateMetrics [chunk])``
  does updates ``offset .. offset+chunk-1`` (those ``>= num_updates`` are skipped);
  ``train(key) -> (state, UpdateMetrics [U])`` is the whole run.
  """
  init: Callable
  run_chunk: Callable
  train: Callable
  net: AgentNetwork | None
  chunk: int
  num_updates: int
  steps_per_update: int


def _plain_hook(net: AgentNetwork, rule_params: PyTree) -> MetaHook:
  """No meta-step: the fixed network and the frozen rule parameters."""
  def step(meta, i, agent_params, opt_state, rollout):
    del i, agent_params, opt_state, rollout
    return meta, MetaOut(rule_params, jnp.zeros((), jnp.float32), {})
  return MetaHook(net=net, net_at=lambda meta: net, init=lambda *_: (), step=step)


def make_train(env: Environment, config: RunConfig, rule: UpdateRule, rule_params: PyTree,
               env_params: PyTree | None = None, meta_hook: MetaHook | None = None) -> TrainFns:
  """Builds ``init``, ``run_chunk`` and ``train`` for one (env, rule) pair.

  Args:
    env: a JAX-native environment (static).
    config: agent, optimiser, hyperparameters, ``B``, ``T``, ``U`` and the chunk size.
    rule: the update rule (LPG or a baseline); ``rule_params`` are its frozen
      parameters (constants of the compiled function; unused with a ``meta_hook``,
      which chooses them per update).
    env_params: fixed task parameters; default: ``env.sample_params`` drawn from
      each seed's key (a fresh task per seed, as a new lifetime).
    meta_hook: an optional per-update meta-step (``MetaHook``).
  """
  t, b, u, chunk = (config.rollout_len, config.num_envs, int(config.num_updates),
                    config.chunk_size)
  optimizer = make_optimizer(config.optimizer)
  agent_step = make_agent_step(env, rule, optimizer, t)
  hook = meta_hook or _plain_hook(
      make_agent_network(config.agent, env.obs_spec, env.num_actions, rule.head_sizes()),
      rule_params)

  def init(key: jax.Array) -> RunState:
    k_env, k_reset, k_agent, k_run = jax.random.split(key, 4)
    ep = env.sample_params(k_env) if env_params is None else env_params
    params = hook.net.init(k_agent)
    opt_state = optimizer.init(params)
    carry = reset_envs(env, ep, k_reset, b)
    return RunState(agent_params=params, opt_state=opt_state, env_params=ep, env=carry,
                    key=k_run, meta=hook.init(params, opt_state, carry))

  def update(state: RunState, i: jax.Array) -> tuple[RunState, UpdateMetrics]:
    key, k_roll = jax.random.split(state.key)

    def meta_step(rollout):
      meta, out = hook.step(state.meta, i, state.agent_params, state.opt_state, rollout)
      return out.rule_params, hook.net_at(meta), (meta, out)

    s, (meta, out) = agent_step(hook.net_at(state.meta), state.env_params, state.agent_params,
                                state.opt_state, state.env, k_roll, None, config.hypers_at(i),
                                make_progress(i, u), meta_step)   # n/N: lifetime-aware rules
    metrics = UpdateMetrics(return_sum=s.stats.return_sum, episodes=s.stats.count,
                            reward_sum=s.rollout.rewards.sum(), loss=s.result.metrics["loss"],
                            entropy=s.entropy, meta_loss=out.loss.astype(jnp.float32),
                            meta_params=out.params)
    return RunState(s.params, s.opt_state, state.env_params, s.envs, key, meta), metrics

  def skip(state: RunState, i: jax.Array) -> tuple[RunState, UpdateMetrics]:
    shapes = jax.eval_shape(update, state, i)[1]
    return state, jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def run_chunk(state: RunState, offset: jax.Array) -> tuple[RunState, UpdateMetrics]:
    def body(s, i):
      if chunk * math.ceil(u / chunk) == u:
        return update(s, i)
      return jax.lax.cond(i < u, update, skip, s, i)
    return jax.lax.scan(body, state, offset + jnp.arange(chunk))

  def train(key: jax.Array) -> tuple[RunState, UpdateMetrics]:
    return jax.lax.scan(update, init(key), jnp.arange(u))

  return TrainFns(init=init, run_chunk=run_chunk, train=train, net=hook.net, chunk=chunk,
                  num_updates=u, steps_per_update=config.steps_per_update)


def whole_run_fns(train: Callable, num_updates: int, steps_per_update: int,
                  net: AgentNetwork | None = None) -> TrainFns:
  """``TrainFns`` for an algorithm with a training loop of its own (one chunk).

  ``train(key) -> (state, UpdateMetrics [U])`` per seed (``meta_loss`` zeros and
  ``meta_params`` ``{}`` when it learns no meta-parameters); ``run_seeds`` then calls it
  once (no progress within the run).
  """
  return TrainFns(init=lambda key: key, run_chunk=lambda key, offset: train(key), train=train,
                  net=net, chunk=int(num_updates), num_updates=int(num_updates),
                  steps_per_update=int(steps_per_update))


@dataclasses.dataclass(frozen=True)
class RunResult:
  """Host-side result of ``run_seeds`` (or of the host loop).

  Attributes:
    metrics: ``UpdateMetrics`` of numpy arrays ``[S, U]``.
    state: final ``RunState`` (``[S]`` leading dims; None for the host loop).
    chunk_s: wall seconds of each chunk call (the first includes compilation).
    chunk_updates: updates done by each chunk call.
    run_s: wall seconds of the whole run (init and compilation included).
    steps_per_update: ``T * B`` environment steps per seed per update.
    seeds_per_chunk: seeds each chunk call advances (all ``S`` for the
      vmapped path, 1 for the host loop, which runs seeds one after another).
  """
  metrics: UpdateMetrics
  state: RunState | None
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
    fns: from ``make_train`` (or ``whole_run_fns``).
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
  metrics = jax.tree_util.tree_map(
      lambda *parts: np.concatenate(parts, axis=1)[:, :fns.num_updates], *outs)
  return RunResult(metrics=metrics, state=state, chunk_s=tuple(durations),
                   chunk_updates=tuple(counts), run_s=time.perf_counter() - t0,
                   steps_per_update=fns.steps_per_update, seeds_per_chunk=int(keys.shape[0]))
