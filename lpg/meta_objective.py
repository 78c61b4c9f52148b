"""The meta-objective of one lifetime: K inner updates, then A2C on theta_K.

For one agent (vmap over the population):

1. K times: roll out the current agent (``T`` steps x ``B`` envs), ask the rule
   for targets, take an inner update through the optimiser (``lpg.update``).
2. Roll out ``theta_K`` once more and score it with an A2C policy gradient whose
   advantages come from a value function that exists only in meta-training
   (GAE, normalised over the agent's batch), plus the regularisers of
   LPG_SPEC section 3:
   ``L = -PG - b0 H(pi) - b1 H(y) + b2 mean(pi_hat^2) + b3 mean(sum y_hat^2)``.

The gradient of ``L`` w.r.t. the rule's parameters flows through all K updates,
the optimiser's included.  The critic learns on every rollout by TD(lambda),
outside the meta-gradient.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from envs.base import Environment
from lpg.networks import AgentConfig, make_agent_network
from lpg.returns import batched_gae, batched_lambda_returns
from lpg.rollout import EnvCarry, reset_envs, unroll
from lpg.rule import InnerHypers, UpdateRule, entropy_from_logits, log_prob, make_progress
from lpg.types import PyTree, Rollout
from lpg.update import OptimizerConfig, inner_update, make_optimizer

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """Meta-objective and rollout sizes.

  Attributes:
    num_inner: K, inner updates per meta-gradient [ported: 5, GROOVE port].
    rollout_len: T, steps per env per rollout [ported: 20].
    num_envs: B, parallel envs per agent [ported: 64].
    gamma: discount of the meta-objective's A2C return [ported: 0.99].
    gae_lambda: [ported: 0.95].
    entropy_coef: b0, policy entropy bonus [ported: 0.05, GROOVE port].
    y_entropy_coef: b1, y entropy bonus [ported: 0.001].
    pi_hat_l2: b2, L2 on pi_hat [ported: 0.005].
    y_hat_l2: b3, L2 on y_hat [ported: 0.001].
    critic_lr: Adam step of the meta-training-only critic [chosen: 0.1 for
      tabular critics, 1e-3 for network critics, see ``critic_lr_for``].
    remat_inner: recompute each inner update in the backward pass instead of
      storing its activations (``jax.checkpoint``): about K times less memory
      for about a third more compute [chosen: off; on for large populations and
      long K].  Measured (CPU, tabular/dense, rule hidden 64, T=20, B=32, 8
      lifetimes, XLA temp memory): K=5 175 -> 45 MiB, K=20 621 -> 80 MiB, step
      time unchanged within noise; the meta-gradient is the same (K=20 test).
  """
  num_inner: int = 5
  rollout_len: int = 20
  num_envs: int = 64
  gamma: float = 0.99
  gae_lambda: float = 0.95
  entropy_coef: float = 0.05
  y_entropy_coef: float = 0.001
  pi_hat_l2: float = 0.005
  y_hat_l2: float = 0.001
  critic_lr: float | None = None
  remat_inner: bool = False

  def __post_init__(self):
    for f in ("num_inner", "rollout_len", "num_envs"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"MetaConfig.{f} must be >= 1, got {getattr(self, f)}")
    if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
      raise ValueError("MetaConfig.gamma and gae_lambda must lie in [0, 1]")

  def critic_lr_for(self, agent_kind: str) -> float:
    if self.critic_lr is not None:
      return self.critic_lr
    return 0.1 if agent_kind == "tabular" else 1e-3

  @property
  def agent_steps_per_update(self) -> int:
    """Environment steps one agent takes per meta-update ((K+1) T B)."""
    return (self.num_inner + 1) * self.rollout_len * self.num_envs


class Lifetime(NamedTuple):
  """Everything one agent of the population carries between meta-updates."""
  agent_params: PyTree
  opt_state: PyTree
  critic_params: PyTree
  critic_opt_state: PyTree
  env_params: PyTree
  env: EnvCarry
  hypers: InnerHypers
  age: jax.Array      # [] int32 n, inner updates done in this lifetime.
  horizon: jax.Array  # [] int32 N, inner updates this lifetime is planned to last (0: open).

  @property
  def progress(self) -> jax.Array:
    """``n / N`` in [0, 1] (0 for an open-ended lifetime); same leading dims as ``age``."""
    return jnp.where(self.horizon > 0, self.age / jnp.maximum(self.horizon, 1), 0.0)


class MetaMetrics(NamedTuple):
  """Per-agent scalars of one meta-objective evaluation."""
  meta_loss: jax.Array
  pg: jax.Array
  entropy: jax.Array
  y_entropy: jax.Array
  pi_hat_sq: jax.Array
  y_hat_sq: jax.Array
  return_sum: jax.Array
  episodes: jax.Array
  critic_loss: jax.Array
  positive_value_loss: jax.Array  # mean(max(A, 0)) of the last rollout's GAE (a level's regret).


class MetaProblem:
  """Static bundle for meta-training a rule on one environment.

  Holds the environment, the rule, the agent and critic networks and the
  optimisers; its methods are pure functions of (rule params, Lifetime, key).
  """

  def __init__(self, env: Environment, rule: UpdateRule, agent: AgentConfig,
               optimizer: OptimizerConfig, meta: MetaConfig):
    self.env, self.rule, self.agent_config, self.meta = env, rule, agent, meta
    self.net = make_agent_network(agent, env.obs_spec, env.num_actions, rule.head_sizes())
    self.critic = make_agent_network(agent, env.obs_spec, 1, {"v": 0})
    self.optimizer = make_optimizer(optimizer)
    self.critic_optimizer = optax.adam(meta.critic_lr_for(agent.kind))

  # ------------------------------------------------------------------ lifetimes
  def init_lifetime(self, key: jax.Array, hypers: InnerHypers, horizon=0,
                    env_params: PyTree | None = None) -> Lifetime:
    """A fresh agent on a freshly drawn task (or on ``env_params``, a given level), planned
    to last ``horizon`` updates."""
    k_env, k_reset, k_agent, k_critic = jax.random.split(key, 4)
    if env_params is None:
      env_params = self.env.sample_params(k_env)
    params = self.net.init(k_agent)
    critic = self.critic.init(k_critic)
    return Lifetime(agent_params=params, opt_state=self.optimizer.init(params),
                    critic_params=critic, critic_opt_state=self.critic_optimizer.init(critic),
                    env_params=env_params,
                    env=reset_envs(self.env, env_params, k_reset, self.meta.num_envs),
                    hypers=hypers, age=jnp.zeros((), jnp.int32),
                    horizon=jnp.asarray(horizon, jnp.int32))

  def rollout(self, params: PyTree, env_params: PyTree, carry: EnvCarry, key: jax.Array):
    return unroll(self.env, env_params, lambda o: self.net.apply(params, o).logits, carry, key,
                  self.meta.rollout_len)

  def critic_update(self, critic: PyTree, opt_state: PyTree, rollout: Rollout):
    """One TD(lambda) regression step of the critic (no meta-gradient)."""
    rollout = sg(rollout)
    discount = self.meta.gamma * rollout.bootstrap_mask

    def loss_fn(c):
      v = self.critic.apply(c, rollout.obs).heads["v"]
      target = sg(batched_lambda_returns(rollout.rewards, discount, v, self.meta.gae_lambda))
      return jnp.mean(jnp.square(v[:-1] - target))

    loss, grads = jax.value_and_grad(loss_fn)(sg(critic))
    updates, opt_state = self.critic_optimizer.update(grads, opt_state, critic)
    return optax.apply_updates(sg(critic), updates), opt_state, loss

  # ------------------------------------------------------------ meta-objective
  def meta_loss(self, rule_params: PyTree, life: Lifetime, key: jax.Array):
    """Meta-loss of one lifetime and the lifetime advanced by K updates.

    Returns:
      ``(loss, (new_life, MetaMetrics))``; ``loss`` is a scalar differentiable
      w.r.t. ``rule_params``.
    """
    meta = self.meta
    keys = jax.random.split(key, meta.num_inner + 1)

    def inner(carry, xs):
      k, j = xs
      params, opt_state, critic, critic_opt, env_carry = carry
      rollout, env_carry, stats = self.rollout(params, life.env_params, env_carry, k)
      progress = make_progress(life.age + j, jnp.maximum(life.horizon, 1))  # lifetime-aware rules
      res = inner_update(self.rule, rule_params, self.net, self.optimizer, params, opt_state,
                         rollout, life.hypers, progress=progress)
      critic, critic_opt, closs = self.critic_update(critic, critic_opt, rollout)
      pi_sq = jnp.mean(jnp.square(res.targets.pi_hat))
      y_sq = (jnp.mean(jnp.sum(jnp.square(res.targets.y_hat), -1))
              if res.targets.y_hat is not None else jnp.zeros(()))
      return (res.params, res.opt_state, critic, critic_opt, env_carry), (pi_sq, y_sq, stats, closs)

    if meta.remat_inner:
      inner = jax.checkpoint(inner)
    init = (life.agent_params, life.opt_state, life.critic_params, life.critic_opt_state, life.env)
    (params, opt_state, critic, critic_opt, env_carry), (pi_sq, y_sq, stats, closs) = jax.lax.scan(
        inner, init, (keys[:-1], jnp.arange(meta.num_inner)))

    rollout, env_carry, last_stats = self.rollout(params, life.env_params, env_carry, keys[-1])
    out = self.net.apply(params, rollout.obs)
    v = self.critic.apply(sg(critic), rollout.obs).heads["v"]
    adv = batched_gae(rollout.rewards, meta.gamma * rollout.bootstrap_mask, v, meta.gae_lambda)
    positive_value_loss = jnp.mean(jnp.maximum(adv, 0.0))
    adv = sg((adv - adv.mean()) / (adv.std() + 1e-8))
    pg = jnp.mean(adv * log_prob(out.logits[:-1], rollout.actions))
    ent = jnp.mean(entropy_from_logits(out.logits[:-1]))
    y_ent = (jnp.mean(entropy_from_logits(out.heads["y"][:-1])) if "y" in out.heads
             else jnp.zeros(()))
    loss = (-pg - meta.entropy_coef * ent - meta.y_entropy_coef * y_ent
            + meta.pi_hat_l2 * jnp.mean(pi_sq) + meta.y_hat_l2 * jnp.mean(y_sq))
    critic, critic_opt, last_closs = self.critic_update(critic, critic_opt, rollout)

    new_life = life._replace(agent_params=sg(params), opt_state=sg(opt_state),
                             critic_params=critic, critic_opt_state=critic_opt, env=env_carry,
                             age=life.age + meta.num_inner)
    metrics = MetaMetrics(
        meta_loss=loss, pg=pg, entropy=ent, y_entropy=y_ent, pi_hat_sq=jnp.mean(pi_sq),
        y_hat_sq=jnp.mean(y_sq),
        return_sum=stats.return_sum.sum() + last_stats.return_sum,
        episodes=stats.count.sum() + last_stats.count,
        critic_loss=jnp.mean(jnp.append(closs, last_closs)),
        positive_value_loss=positive_value_loss)
    return loss, (new_life, sg(metrics))


def population_meta_grad(problem: MetaProblem, rule_params: PyTree, lives: Lifetime,
                         keys: jax.Array, chunk: int = 0):
  """Mean meta-loss over a vmapped population of lifetimes and its gradient.

  The one population meta-gradient of the project: the meta-training job, the
  benchmarks and the tests all call it.  With ``0 < chunk < P`` the population is
  processed in ``P / chunk`` sequential chunks (a ``lax.scan``) whose losses and
  gradients are averaged: memory ~ ``chunk`` lifetimes instead of ``P``.  Chunk
  ``c`` holds lifetimes ``c, c + P/chunk, ...``, so the within-chunk axis keeps
  a device sharding of the population and the scan runs over the unsharded one.
  Rematerialising the inner updates is ``MetaConfig.remat_inner``.

  Args:
    lives: ``Lifetime`` with a leading population dim ``[P]``.
    keys: ``[P, 2]`` PRNG keys, one per lifetime.
    chunk: lifetimes per chunk; 0 (or ``P``) processes all at once.  Must divide ``P``.
  Returns:
    ``(loss, grads, new_lives, metrics)``: scalar mean loss, gradient w.r.t.
    ``rule_params``, lifetimes advanced by K updates (``[P]``) and ``MetaMetrics``
    with ``[P]`` fields.
  """
  def batch_grad(lives_c, keys_c):
    def batch_loss(rp):
      losses, (new_lives, metrics) = jax.vmap(problem.meta_loss, in_axes=(None, 0, 0))(
          rp, lives_c, keys_c)
      return jnp.mean(losses), (new_lives, metrics)
    (loss, (new_lives, metrics)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        rule_params)
    return loss, grads, new_lives, metrics

  pop = keys.shape[0]
  chunk = chunk or pop
  if pop % chunk:
    raise ValueError(f"chunk ({chunk}) must divide the population ({pop})")
  n_chunks = pop // chunk
  if n_chunks == 1:
    return batch_grad(lives, keys)
  split = lambda x: jnp.swapaxes(x.reshape((chunk, n_chunks) + x.shape[1:]), 0, 1)
  merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((pop,) + x.shape[2:])

  def body(acc, xs):
    loss, grads, new_lives, metrics = batch_grad(*xs)
    acc = jax.tree_util.tree_map(lambda a, b: a + b / n_chunks, acc, (loss, grads))
    return acc, (new_lives, metrics)

  zero = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, rule_params))
  (loss, grads), (new_lives, metrics) = jax.lax.scan(
      body, zero, (jax.tree_util.tree_map(split, lives), split(keys)))
  return loss, grads, jax.tree_util.tree_map(merge, new_lives), jax.tree_util.tree_map(
      merge, metrics)
