"""Meta-training a MetaGenRL objective (discrete actions) through a critic.

A population of agents (``vmap``) per training world.  One meta-training step:

1. **act**: every agent rolls out ``T`` steps x ``B`` envs, pushes the ``B``
   segments into its replay buffer (a fixed-size circular array inside the
   compiled state) and takes one update on the current objective through the
   real inner update (``lpg.update.inner_update``): agents keep learning with
   the current objective between meta-updates, exactly as in ``lpg-apply``.
2. ``replay_ratio`` times: **critic** (a meta-training-only Q network with two
   heads; clipped double-Q targets ``r + gamma sum_a pi(a|s') min_i Q'_i(s', a)``
   from Polyak-averaged target heads, as TD3) learns from a replayed batch; then
   the **meta-gradient**: from another replayed batch, ``K`` inner steps on the
   objective through the agent's optimiser and its state, then the critic's value
   of the updated policy ``sum_a pi_{theta_K}(a|s) Q_1(s, a)`` on the batch's
   held-out segments is ascended w.r.t. the objective's parameters (second order
   through the inner steps), averaged over agents and worlds; Adam on the objective.
3. Agents whose lifetime ended are replaced by fresh ones on freshly drawn tasks
   (lifetimes are staggered at the start).

Shapes: one agent's arrays as in ``lpg.types``; a population adds ``[P]`` in front.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from envs.base import Environment
from lpg.metagenrl import MetaGenRLRule, WithProgress
from lpg.networks import AgentConfig, make_agent_network
from lpg.returns import batched_lambda_returns
from lpg.rollout import EnvCarry, reset_envs, unroll
from lpg.rule import InnerHypers, entropy_from_logits
from lpg.types import PyTree, Rollout
from lpg.update import OptimizerConfig, inner_update, make_optimizer

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class MetaGenRLTrainConfig:
  """Sizes and constants of MetaGenRL meta-training.

  "[code]" marks the defaults of the paper's public code (louiskirsch/metagenrl,
  ``ray_configs.base``); the rest are chosen for our small discrete worlds.

  Attributes:
    num_agents: P, agents per training world [code: ``agent_count`` 8 in total;
      chosen: 8 per world].
    rollout_len: T, steps per env per rollout = replay segment length [code:
      ``recurrent_time_steps`` 20].
    num_envs: B, envs per agent (segments pushed per rollout) [chosen: 16].
    buffer_segments: capacity of each agent's circular buffer, in segments
      (must be >= num_envs) [chosen: 512; code: 1e6 transitions].
    batch_segments: segments per replayed batch of the critic and per split of
      the meta-gradient's batch [chosen: 8 (160 transitions); code:
      ``buffer_sample_size`` 100].
    replay_ratio: critic and meta-gradient steps per rollout [chosen: 1].
    num_inner: K, inner steps inside the meta-gradient [code:
      ``obj_func_second_order_steps`` 1].
    gamma: discount of the critic's targets and the agents' [code: 0.99].
    critic_lr: Adam step of tabular agents' critics [code: 1e-3; use ~0.1 for tabular critics].
    network_critic_lr: Adam step of MLP / conv agents' critics [code: 1e-3].
    critic_tau: Polyak rate of the target heads [code: 0.005].
    critic_lambda: 0 for one-step clipped double-Q targets (TD3); > 0 for
      Peng's Q(lambda) targets on the replayed segment [chosen: 0].
    meta_lr: Adam step of the objective [code: ``obj_func_learning_rate`` 1e-3].
    meta_grad_clip: global-norm clip of the meta-gradient, 0 to disable
      [code: ``clip_gradient`` 1.0].
    entropy_coef: policy entropy bonus added to the meta-objective [chosen: 0].
    held_out: score the updated policy on segments held out of the inner steps;
      ``False`` scores it on the inner steps' own states (as the paper's code
      does; needed for tabular agents on large state spaces, whose update
      moves only the rows of the states it saw) [chosen: True].
    lifetime_updates: agent updates per lifetime before a fresh agent replaces
      it; 0 never replaces [chosen: 0].
  """
  num_agents: int = 8
  rollout_len: int = 20
  num_envs: int = 16
  buffer_segments: int = 512
  batch_segments: int = 8
  replay_ratio: int = 1
  num_inner: int = 1
  gamma: float = 0.99
  critic_lr: float = 1e-3
  network_critic_lr: float = 1e-3
  critic_tau: float = 0.005
  critic_lambda: float = 0.0
  meta_lr: float = 1e-3
  meta_grad_clip: float = 1.0
  entropy_coef: float = 0.0
  held_out: bool = True
  lifetime_updates: int = 0

  def __post_init__(self):
    for f in ("num_agents", "rollout_len", "num_envs", "buffer_segments", "batch_segments",
              "replay_ratio", "num_inner"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"MetaGenRLTrainConfig.{f} must be >= 1, got {getattr(self, f)}")
    if self.buffer_segments < self.num_envs:
      raise ValueError("MetaGenRLTrainConfig.buffer_segments must be >= num_envs")
    if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.critic_lambda <= 1.0:
      raise ValueError("MetaGenRLTrainConfig.gamma and critic_lambda must lie in [0, 1]")
    if not 0.0 < self.critic_tau <= 1.0:
      raise ValueError("MetaGenRLTrainConfig.critic_tau must lie in (0, 1]")
    if not (self.critic_lr > 0 and self.network_critic_lr > 0 and self.meta_lr > 0):
      raise ValueError("MetaGenRLTrainConfig.critic_lr, network_critic_lr and meta_lr must be > 0")
    if self.lifetime_updates < 0 or self.meta_grad_clip < 0:
      raise ValueError("MetaGenRLTrainConfig.lifetime_updates and meta_grad_clip must be >= 0")


# Measured on CPU (chain/short + tabular/dense, 8 agents per world, 2000 steps, seed 0):
# fresh tabular agents trained by the result match A2C at equal budgets (see the
# branch report).  The code defaults (meta_lr 1e-3, no entropy, held-out states)
# were unstable or flat there; these are the settings that worked.
PRESETS: dict[str, MetaGenRLTrainConfig] = {
    "tabular": MetaGenRLTrainConfig(num_agents=8, num_envs=16, critic_lr=0.1, critic_lambda=0.9,
                                    held_out=False, lifetime_updates=250, meta_lr=3e-4,
                                    entropy_coef=0.01),
}


# ------------------------------------------------------------------ replay buffer
class Buffer(NamedTuple):
  """A circular buffer of ``C`` trajectory segments (batch-major ``[C, T(+1), ...]``).

  ``ptr`` is the next slot to write, ``count`` the number of filled slots (<= C).
  """
  obs: jax.Array
  actions: jax.Array
  rewards: jax.Array
  terminated: jax.Array
  truncated: jax.Array
  ptr: jax.Array
  count: jax.Array


def buffer_init(env: Environment, capacity: int, rollout_len: int) -> Buffer:
  spec = env.obs_spec
  zeros = lambda *s, dt=jnp.float32: jnp.zeros((capacity,) + s, dt)
  return Buffer(obs=zeros(rollout_len + 1, *spec.shape, dt=spec.dtype),
                actions=zeros(rollout_len, dt=jnp.int32), rewards=zeros(rollout_len),
                terminated=zeros(rollout_len, dt=jnp.bool_),
                truncated=zeros(rollout_len, dt=jnp.bool_),
                ptr=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32))


def buffer_push(buf: Buffer, rollout: Rollout) -> Buffer:
  """Writes the ``B`` segments of ``rollout`` (``[T(+1), B]``) over the oldest slots."""
  capacity, b = buf.rewards.shape[0], rollout.rewards.shape[1]
  idx = (buf.ptr + jnp.arange(b)) % capacity
  put = lambda store, x: store.at[idx].set(jnp.swapaxes(x, 0, 1).astype(store.dtype))
  return Buffer(*(put(s, x) for s, x in zip(buf[:5], rollout)),
                ptr=(buf.ptr + b) % capacity, count=jnp.minimum(buf.count + b, capacity))


def buffer_sample(buf: Buffer, key: jax.Array, n: int) -> Rollout:
  """``n`` segments drawn uniformly (with replacement) from the filled slots, as a
  time-major ``Rollout`` ``[T(+1), n]``."""
  idx = jax.random.randint(key, (n,), 0, jnp.maximum(buf.count, 1))
  return Rollout(*(jnp.swapaxes(s[idx], 0, 1) for s in buf[:5]))


def split_segments(rollout: Rollout, parts: int) -> list[Rollout]:
  """Splits ``[T(+1), parts * n]`` along the batch into ``parts`` rollouts ``[T(+1), n]``."""
  n = rollout.rewards.shape[1] // parts
  return [jax.tree_util.tree_map(lambda x: x[:, i * n:(i + 1) * n], rollout) for i in range(parts)]


# ----------------------------------------------------------------------- agents
class AgentState(NamedTuple):
  """What one agent of the population carries (``[P]`` in front when batched)."""
  agent_params: PyTree
  opt_state: PyTree
  critic_params: PyTree
  critic_target: PyTree
  critic_opt_state: PyTree
  env_params: PyTree
  env: EnvCarry
  buffer: Buffer
  hypers: InnerHypers
  age: jax.Array  # [] int32, agent updates done in this lifetime.


class StepMetrics(NamedTuple):
  """Per-agent scalars of one meta-training step (``[P]`` per world)."""
  return_sum: jax.Array
  episodes: jax.Array
  critic_loss: jax.Array
  meta_value: jax.Array
  entropy: jax.Array


class MetaGenRLProblem:
  """Static bundle for one training world: env, objective, agent, critic, optimisers.

  Methods are pure functions of (objective params, ``AgentState``, key).  The
  critic is an agent network of the same kind whose policy logits are ``Q_1``
  ``[..., A]`` and whose head ``q2`` is ``Q_2``.
  """

  def __init__(self, env: Environment, rule: MetaGenRLRule, agent: AgentConfig,
               optimizer: OptimizerConfig, config: MetaGenRLTrainConfig):
    self.env, self.rule, self.config = env, rule, config
    self.net = make_agent_network(agent, env.obs_spec, env.num_actions, rule.head_sizes())
    self.critic = make_agent_network(agent, env.obs_spec, env.num_actions,
                                     {"q2": env.num_actions})
    self.optimizer = make_optimizer(optimizer)
    self.critic_optimizer = optax.adam(
        config.critic_lr if agent.kind == "tabular" else config.network_critic_lr)

  def init_agent(self, key: jax.Array, hypers: InnerHypers, age=0) -> AgentState:
    """A fresh agent, critic and empty buffer on a freshly drawn task."""
    c = self.config
    k_env, k_reset, k_agent, k_critic = jax.random.split(key, 4)
    env_params = self.env.sample_params(k_env)
    params, critic = self.net.init(k_agent), self.critic.init(k_critic)
    return AgentState(
        agent_params=params, opt_state=self.optimizer.init(params), critic_params=critic,
        critic_target=critic, critic_opt_state=self.critic_optimizer.init(critic),
        env_params=env_params, env=reset_envs(self.env, env_params, k_reset, c.num_envs),
        buffer=buffer_init(self.env, c.buffer_segments, c.rollout_len), hypers=hypers,
        age=jnp.asarray(age, jnp.int32))

  def rule_for(self, state: AgentState):
    """The objective, with the lifetime progress bound when it takes one."""
    if not self.rule.config.use_progress:
      return self.rule
    span = max(self.config.lifetime_updates, 1)
    return WithProgress(self.rule, jnp.clip(state.age / span, 0.0, 1.0))

  def act(self, rule_params: PyTree, state: AgentState, key: jax.Array):
    """Rollout, push to the buffer, one agent update on the current objective.

    Returns ``(state, EpisodeStats)``.
    """
    params = state.agent_params
    rollout, carry, stats = unroll(self.env, state.env_params,
                                   lambda o: self.net.apply(params, o).logits, state.env, key,
                                   self.config.rollout_len)
    res = inner_update(self.rule_for(state), sg(rule_params), self.net, self.optimizer, params,
                       state.opt_state, rollout, state.hypers)
    return state._replace(agent_params=res.params, opt_state=res.opt_state, env=carry,
                          buffer=buffer_push(state.buffer, rollout), age=state.age + 1), stats

  # ------------------------------------------------------------------- critic
  def critic_targets(self, target: PyTree, agent_params: PyTree, batch: Rollout) -> jax.Array:
    """Clipped double-Q targets ``[T, n]``, expected over the current policy."""
    q = self.critic.apply(target, batch.obs)
    q_min = jnp.minimum(q.logits, q.heads["q2"])                        # [T+1, n, A]
    pi = jax.nn.softmax(self.net.apply(agent_params, batch.obs).logits)
    v = jnp.sum(pi * q_min, axis=-1)                                     # [T+1, n]
    discount = self.config.gamma * batch.bootstrap_mask
    return batched_lambda_returns(batch.rewards, discount, v, self.config.critic_lambda)

  def critic_update(self, state: AgentState, key: jax.Array):
    """One regression step of both Q heads on a replayed batch, then Polyak averaging.

    Returns ``(state, loss)``.
    """
    batch = buffer_sample(state.buffer, key, self.config.batch_segments)
    y = sg(self.critic_targets(state.critic_target, state.agent_params, batch))
    a = batch.actions[..., None]

    def loss_fn(c):
      q = self.critic.apply(c, batch.obs[:-1])
      q1 = jnp.take_along_axis(q.logits, a, -1)[..., 0]
      q2 = jnp.take_along_axis(q.heads["q2"], a, -1)[..., 0]
      return jnp.mean(jnp.square(q1 - y)) + jnp.mean(jnp.square(q2 - y))

    loss, grads = jax.value_and_grad(loss_fn)(state.critic_params)
    updates, opt_state = self.critic_optimizer.update(grads, state.critic_opt_state)
    critic = optax.apply_updates(state.critic_params, updates)
    target = optax.incremental_update(critic, state.critic_target, self.config.critic_tau)
    return state._replace(critic_params=critic, critic_target=target,
                          critic_opt_state=opt_state), loss

  # ----------------------------------------------------------- meta-objective
  def meta_loss(self, rule_params: PyTree, state: AgentState, key: jax.Array):
    """``-(value of the K-step-updated policy on held-out replayed segments)``.

    A replayed batch of ``(K+1) * batch_segments`` segments is split in K+1
    parts: K inner steps (one per part) on the objective through the agent's
    optimiser and state, then ``mean_s sum_a pi_{theta_K}(a|s) Q_1(s, a)`` (plus
    ``entropy_coef`` times the policy entropy) on the last part's states
    (without ``held_out``: K parts, scored on all their states).

    Returns ``(loss, (value, entropy))``; ``loss`` is differentiable w.r.t.
    ``rule_params`` (second order through the inner steps).
    """
    c = self.config
    parts = c.num_inner + int(c.held_out)
    batch = buffer_sample(state.buffer, key, parts * c.batch_segments)
    inner_parts = split_segments(batch, parts)[:c.num_inner]
    scored = split_segments(batch, parts)[-1] if c.held_out else batch
    rule = self.rule_for(state)
    params, opt_state = state.agent_params, state.opt_state
    for part in inner_parts:
      res = inner_update(rule, rule_params, self.net, self.optimizer, params, opt_state, part,
                         state.hypers)
      params, opt_state = res.params, res.opt_state
    obs = scored.obs[:-1]
    logits = self.net.apply(params, obs).logits
    q1 = self.critic.apply(sg(state.critic_params), obs).logits
    value = jnp.mean(jnp.sum(jax.nn.softmax(logits) * q1, axis=-1))
    ent = jnp.mean(entropy_from_logits(logits))
    return -(value + c.entropy_coef * ent), (sg(value), sg(ent))


# ------------------------------------------------------------------ population
class MetaState(NamedTuple):
  """Everything meta-training carries: the objective, its optimiser, the populations."""
  rule_params: PyTree
  meta_opt_state: PyTree
  populations: tuple  # one AgentState with leading [P] per training world
  key: jax.Array
  step: jax.Array


def make_meta_optimizer(config: MetaGenRLTrainConfig) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(config.meta_grad_clip)] if config.meta_grad_clip > 0 else []
  return optax.chain(*parts, optax.adam(config.meta_lr))


def _tree_where(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
  """Per-agent select: ``mask`` ``[P]`` picks ``a`` over ``b`` leaf by leaf."""
  return jax.tree_util.tree_map(
      lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def init_meta_state(problems: Sequence[MetaGenRLProblem], hypers: Sequence[InnerHypers],
                    key: jax.Array, rule_params: PyTree | None = None) -> MetaState:
  """Fresh objective (unless given) and populations; lifetimes staggered by age."""
  config = problems[0].config
  k_rule, k_pop, k_run = jax.random.split(key, 3)
  if rule_params is None:
    rule_params = problems[0].rule.init(k_rule)
  p = config.num_agents
  ages = (jnp.arange(p) * config.lifetime_updates) // p
  pops = tuple(
      jax.vmap(prob.init_agent, in_axes=(0, None, 0))(jax.random.split(k, p), h, ages)
      for prob, h, k in zip(problems, hypers, jax.random.split(k_pop, len(problems))))
  return MetaState(rule_params, make_meta_optimizer(config).init(rule_params), pops, k_run,
                   jnp.zeros((), jnp.int32))


def make_meta_step(problems: Sequence[MetaGenRLProblem]):
  """``step(MetaState) -> (MetaState, tuple of StepMetrics [P] per world)``; jit it
  (or ``lax.scan`` it).  All problems must share one ``MetaGenRLTrainConfig``."""
  config = problems[0].config
  meta_opt = make_meta_optimizer(config)
  p = config.num_agents

  def replay(carry, key):
    rule_params, meta_opt_state, pops = carry
    k_critic, k_meta = jax.random.split(key)
    pops, closs = zip(*(jax.vmap(prob.critic_update)(s, jax.random.split(k, p))
                        for prob, s, k in zip(problems, pops,
                                              jax.random.split(k_critic, len(problems)))))

    def loss_fn(rp):
      outs = [jax.vmap(prob.meta_loss, in_axes=(None, 0, 0))(rp, s, jax.random.split(k, p))
              for prob, s, k in zip(problems, pops, jax.random.split(k_meta, len(problems)))]
      return jnp.mean(jnp.stack([jnp.mean(l) for l, _ in outs])), [aux for _, aux in outs]

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(rule_params)
    updates, meta_opt_state = meta_opt.update(grads, meta_opt_state, rule_params)
    rule_params = optax.apply_updates(rule_params, updates)
    return (rule_params, meta_opt_state, tuple(pops)), (closs, aux)

  def step(ms: MetaState):
    key, k_act, k_replay, k_reset = jax.random.split(ms.key, 4)
    acted = [jax.vmap(prob.act, in_axes=(None, 0, 0))(ms.rule_params, s, jax.random.split(k, p))
             for prob, s, k in zip(problems, ms.populations,
                                   jax.random.split(k_act, len(problems)))]
    pops = tuple(s for s, _ in acted)
    (rule_params, meta_opt_state, pops), (closs, aux) = jax.lax.scan(
        replay, (ms.rule_params, ms.meta_opt_state, pops),
        jax.random.split(k_replay, config.replay_ratio))
    if config.lifetime_updates > 0:
      pops = tuple(_renew(prob, s, k) for prob, s, k in
                   zip(problems, pops, jax.random.split(k_reset, len(problems))))
    metrics = tuple(
        StepMetrics(return_sum=stats.return_sum, episodes=stats.count,
                    critic_loss=jnp.mean(cl, 0), meta_value=jnp.mean(a[0], 0),
                    entropy=jnp.mean(a[1], 0))
        for (_, stats), cl, a in zip(acted, closs, aux))
    return MetaState(rule_params, meta_opt_state, pops, key, ms.step + 1), metrics

  return step


def _renew(problem: MetaGenRLProblem, pop: AgentState, key: jax.Array) -> AgentState:
  """Replaces agents whose lifetime ended by fresh ones (same hypers)."""
  p = problem.config.num_agents
  fresh = jax.vmap(problem.init_agent, in_axes=(0, 0))(jax.random.split(key, p), pop.hypers)
  return _tree_where(pop.age >= problem.config.lifetime_updates, fresh, pop)


def run_meta_train(problems: Sequence[MetaGenRLProblem], hypers: Sequence[InnerHypers],
                   num_steps: int, seed: int = 0, chunk: int = 50,
                   rule_params: PyTree | None = None):
  """Meta-trains for ``num_steps`` steps (compiled ``chunk`` steps at a time).

  Returns ``(MetaState, list of per-chunk metrics)``; each entry is a tuple (per
  world) of ``StepMetrics`` with ``[chunk, P]`` numpy arrays.
  """
  step = make_meta_step(problems)

  @jax.jit
  def run_chunk(ms):
    return jax.lax.scan(lambda m, _: step(m), ms, None, length=chunk)

  ms = init_meta_state(problems, hypers, jax.random.PRNGKey(seed), rule_params)
  history = []
  for _ in range(-(-int(num_steps) // chunk)):
    ms, metrics = run_chunk(ms)
    history.append(jax.device_get(metrics))
  return ms, history
