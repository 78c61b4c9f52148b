"""Proximal policy optimisation (Schulman et al. 2017) for discrete actions, on the
project's agent networks and environments: one compiled function per run.

In the style of purejaxrl (Lu et al. 2022, ``purejaxrl/ppo.py``): ``train(key)``
is a ``lax.scan`` over ``U`` updates; each update collects ``rollout_len`` steps
in ``num_envs`` environments (``lpg.rollout.unroll``, ``vmap`` over envs), computes
GAE advantages once, then scans ``update_epochs`` epochs of ``num_minibatches``
shuffled minibatches, each one Adam step on the clipped-surrogate loss
(``ppo_loss``).  Seeds are a ``jax.vmap``: ``jax.jit(jax.vmap(train))(keys)``.

The agent is the one every other algorithm uses (``lpg.networks``: same torso,
policy head ``pi`` and a scalar value head ``v``, as A2C's), optionally
re-initialised orthogonally (``orthogonal_init``).  Metrics are
``PPOMetrics`` per update, whose first five fields are those of
``meta_test.train.UpdateMetrics``, so ``run_seeds``, ``final_returns`` and
``curve_frame`` of ``meta_test`` work unchanged.

Entry points:

* ``make_train_fns(config, env, agent_config, num_updates, chunk, env_params)
  -> meta_test.train.TrainFns`` (``init``, ``run_chunk``, ``train``, ...; use with
  ``meta_test.train.run_seeds``), and ``make_train(...) -> train(key)``.
* ``make_ppo_train_fns``: the same with ``meta_test.train.make_train_fns``'s
  argument list (rule = ``PPORule``), for the ``lpg-apply`` algorithm table.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs.base import Environment
from lpg.networks import AgentConfig, AgentNetwork, make_agent_network
from lpg.returns import batched_gae
from lpg.rollout import reset_envs, unroll
from lpg.rule import InnerHypers, UpdateRule, entropy_from_logits, log_prob
from lpg.types import PyTree, Rollout, RuleOutputs
from lpg.update import OptimizerConfig
from meta_test.train import RunState as TrainState, TrainFns

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Every PPO setting.  Defaults: purejaxrl's CartPole PPO [ported: purejaxrl
  ``ppo.py`` ``__main__`` config, itself the CleanRL / "37 implementation
  details" settings]; ``PPO_DEFAULTS`` holds the per-observation-kind choices.

  Attributes:
    learning_rate: Adam step size [ported: 2.5e-4].
    num_envs: ``B`` parallel environments [ported: 4].
    rollout_len: ``T`` steps per environment per update [ported: 128].
    update_epochs: passes over each rollout [ported: 4].
    num_minibatches: minibatches per epoch; must divide ``T * B`` [ported: 4].
    gamma: discount [ported: 0.99].
    gae_lambda: GAE lambda [ported: 0.95].
    clip_eps: ratio clipping range, and the value clipping range [ported: 0.2].
    clip_value: clip the value loss around the rollout's values [ported: True,
      purejaxrl always clips].
    value_coef: weight of the value loss ``0.5 * (v - G)^2`` [ported: 0.5].
    entropy_coef: weight of the entropy bonus [ported: 0.01].
    max_grad_norm: global-norm gradient clipping, ``0`` disables [ported: 0.5].
    anneal_lr: decay the learning rate linearly to 0 over the run, in steps of
      one update [ported: True].
    normalize_advantages: standardise advantages per minibatch [ported: True].
    adam_eps: Adam's epsilon [ported: 1e-5].
    orthogonal_init: orthogonal weights (gain sqrt(2) torso, 0.01 policy, 1.0
      value) and zero biases for MLP / conv agents [ported: True]; tabular
      agents keep their zero tables.
  """
  learning_rate: float = 2.5e-4
  num_envs: int = 4
  rollout_len: int = 128
  update_epochs: int = 4
  num_minibatches: int = 4
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  clip_value: bool = True
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  max_grad_norm: float = 0.5
  anneal_lr: bool = True
  normalize_advantages: bool = True
  adam_eps: float = 1e-5
  orthogonal_init: bool = True

  def __post_init__(self):
    for name in ("num_envs", "rollout_len", "update_epochs", "num_minibatches"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
    if (self.num_envs * self.rollout_len) % self.num_minibatches:
      raise ValueError(f"PPOConfig.num_minibatches ({self.num_minibatches}) must divide "
                       f"num_envs * rollout_len ({self.num_envs * self.rollout_len})")
    if not self.learning_rate > 0:
      raise ValueError(f"PPOConfig.learning_rate must be positive, got {self.learning_rate}")
    if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
      raise ValueError("PPOConfig.gamma and gae_lambda must lie in [0, 1]")
    if self.clip_eps <= 0 or min(self.value_coef, self.entropy_coef, self.max_grad_norm) < 0:
      raise ValueError("PPOConfig.clip_eps must be > 0; value_coef, entropy_coef and "
                       "max_grad_norm >= 0")

  @property
  def steps_per_update(self) -> int:
    return int(self.num_envs * self.rollout_len)


# Per observation kind.
# vector: purejaxrl CartPole (above) with lr 1e-3 [chosen: purejaxrl's 2.5e-4 suits
#   its separate tanh actor and critic; on the shared ReLU torso of lpg.networks
#   (64, 64) it reached 190 on CartPole at 500k steps (1 seed), 1e-3 reached 500 on
#   3 of 3 seeds (keys split from PRNGKey(0))].
# image: gymnax-blines MinAtar PPO [ported: gymnax-blines agents/<Game>-MinAtar/
#   ppo.yaml: 64 envs x 128 steps, 8 minibatches, 4 epochs, lr 5e-4 constant,
#   clip 0.2, lambda 0.95, entropy 0.01, critic 0.5, grad norm 0.5, MLP 256x2; its
#   gamma 0.999 is replaced by 0.99, the discount every other algorithm here uses].
# index: tabular agents [chosen: the vector settings with lr 0.1 (zero tables;
#   orthogonal init leaves tables alone): 1.0 on chain/short at 100k steps, 2 seeds].
PPO_DEFAULTS: dict[str, PPOConfig] = {
    "vector": PPOConfig(learning_rate=1e-3),
    "image": PPOConfig(learning_rate=5e-4, num_envs=64, rollout_len=128, num_minibatches=8,
                       anneal_lr=False),
    "index": PPOConfig(learning_rate=0.1),
}


class PPOMetrics(NamedTuple):
  """Per-update metrics; ``[U]`` per seed (``[S, U]`` vmapped).  The first five
  fields are ``meta_test.train.UpdateMetrics``'s.

  Attributes:
    return_sum, episodes, reward_sum: as ``UpdateMetrics`` (episodes that ended
      in the update's rollout).
    loss: total PPO loss, mean over the update's minibatch steps.
    entropy: mean policy entropy over the rollout (behaviour policy).
    value_loss, approx_kl, clip_frac: means over the minibatch steps of
      ``0.5 (v - G)^2`` (clipped if ``clip_value``), ``mean(ratio - 1 - log
      ratio)`` and the fraction of samples with ``|ratio - 1| > clip_eps``.
  """
  return_sum: jax.Array
  episodes: jax.Array
  reward_sum: jax.Array
  loss: jax.Array
  entropy: jax.Array
  value_loss: jax.Array
  approx_kl: jax.Array
  clip_frac: jax.Array


class Batch(NamedTuple):
  """Flat training samples ``[N, ...]`` (one minibatch or the whole rollout)."""
  obs: jax.Array
  actions: jax.Array
  log_probs: jax.Array
  values: jax.Array
  advantages: jax.Array
  returns: jax.Array


def ppo_loss(config: PPOConfig, logits: jax.Array, values: jax.Array, batch: Batch
             ) -> tuple[jax.Array, dict]:
  """The PPO loss on one minibatch of ``N`` samples.

  ``loss = -mean(min(r A, clip(r, 1-eps, 1+eps) A)) + value_coef * L_v -
  entropy_coef * mean(H(pi))`` with ``r = exp(log pi(a|s) - batch.log_probs)``,
  ``A`` the advantages (standardised over the minibatch if
  ``normalize_advantages``), ``L_v = 0.5 mean((v - G)^2)``, or with
  ``clip_value`` ``0.5 mean(max((v - G)^2, (v_old + clip(v - v_old, -eps,
  eps) - G)^2))``.

  Args:
    config: the PPO settings.
    logits: ``[N, A]`` current policy logits.
    values: ``[N]`` current values.
    batch: the samples (``log_probs``, ``values``: behaviour policy's).
  Returns:
    ``(loss, aux)``, ``aux`` with ``pg_loss``, ``value_loss``, ``entropy``,
    ``approx_kl``, ``clip_frac``.
  """
  eps = config.clip_eps
  adv = batch.advantages
  if config.normalize_advantages:
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
  log_ratio = log_prob(logits, batch.actions) - batch.log_probs
  ratio = jnp.exp(log_ratio)
  pg_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv))
  v_err = jnp.square(values - batch.returns)
  if config.clip_value:
    v_clipped = batch.values + jnp.clip(values - batch.values, -eps, eps)
    v_err = jnp.maximum(v_err, jnp.square(v_clipped - batch.returns))
  value_loss = 0.5 * jnp.mean(v_err)
  entropy = jnp.mean(entropy_from_logits(logits))
  loss = pg_loss + config.value_coef * value_loss - config.entropy_coef * entropy
  aux = {"pg_loss": pg_loss, "value_loss": value_loss, "entropy": entropy,
         "approx_kl": jnp.mean(ratio - 1.0 - log_ratio),
         "clip_frac": jnp.mean((jnp.abs(ratio - 1.0) > eps).astype(jnp.float32))}
  return loss, aux


def make_batch(config: PPOConfig, net: AgentNetwork, params: PyTree, rollout: Rollout) -> Batch:
  """Behaviour log-probs and values, GAE advantages and returns of ``rollout``
  (``[T(+1), B]``), flattened to ``[T * B, ...]``.

  Bootstraps with ``gamma * rollout.bootstrap_mask`` (no bootstrap past any
  episode end, as A2C and purejaxrl) and the value of ``obs[T]`` for the tail.
  """
  out = net.apply(params, rollout.obs)
  v = out.heads["v"]                                                     # [T+1, B]
  adv = batched_gae(rollout.rewards, config.gamma * rollout.bootstrap_mask, v, config.gae_lambda)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  return Batch(obs=flat(rollout.obs[:-1]), actions=flat(rollout.actions),
               log_probs=flat(log_prob(out.logits[:-1], rollout.actions)), values=flat(v[:-1]),
               advantages=flat(adv), returns=flat(adv + v[:-1]))


def orthogonal_init(params: PyTree, key: jax.Array) -> PyTree:
  """Orthogonal weights, zero biases for an MLP / conv agent of ``lpg.networks``.

  Gains [ported: purejaxrl / CleanRL]: ``sqrt(2)`` for torso layers, ``0.01``
  for the policy head ``pi``, ``1.0`` for the value head ``v``.  Tabular agents
  (no ``w``/``b`` modules) are returned unchanged.
  """
  gains = {"pi": 0.01, "v": 1.0}
  out = {}
  for i, (name, module) in enumerate(sorted(params.items())):
    if set(module) != {"w", "b"}:
      out[name] = module
      continue
    init = jax.nn.initializers.orthogonal(gains.get(name, float(np.sqrt(2.0))))
    out[name] = {"w": init(jax.random.fold_in(key, i), module["w"].shape, module["w"].dtype),
                 "b": jnp.zeros_like(module["b"])}
  return out


def make_optimizer(config: PPOConfig, num_updates: int) -> optax.GradientTransformation:
  """Grad-norm clipping then Adam; with ``anneal_lr`` the rate falls linearly
  from ``learning_rate`` to 0, one step per update [ported: purejaxrl
  ``linear_schedule``: ``lr * (1 - (count // (mb * epochs)) / U)``]."""
  lr: float | Callable = config.learning_rate
  if config.anneal_lr:
    per_update = config.num_minibatches * config.update_epochs
    lr = lambda count: config.learning_rate * (1.0 - (count // per_update) / num_updates)
  parts = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
  return optax.chain(*parts, optax.adam(lr, eps=config.adam_eps))


def make_network(config: PPOConfig, env: Environment, agent_config: AgentConfig) -> AgentNetwork:
  """The agent of ``lpg.networks`` with a scalar value head ``v``; its ``init``
  is orthogonal when ``config.orthogonal_init``."""
  net = make_agent_network(agent_config, env.obs_spec, env.num_actions, {"v": 0})
  if not config.orthogonal_init:
    return net

  def init(key):
    k_net, k_orth = jax.random.split(key)
    return orthogonal_init(net.init(k_net), k_orth)
  return AgentNetwork(init=init, apply=net.apply)


def make_learner(config: PPOConfig, net: AgentNetwork, optimizer: optax.GradientTransformation
                 ) -> Callable:
  """``learn(params, opt_state, batch [N], key) -> (params, opt_state, aux)``:
  ``update_epochs`` epochs of ``num_minibatches`` shuffled minibatches; ``aux``
  holds the means over those steps of ``loss`` and ``ppo_loss``'s metrics."""
  m = config.num_minibatches

  def minibatch_step(carry, mb: Batch):
    params, opt_state = carry

    def loss_fn(p):
      out = net.apply(p, mb.obs)
      return ppo_loss(config, out.logits, out.heads["v"], mb)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), dict(aux, loss=loss)

  def epoch(carry, key):
    n = carry[2].actions.shape[0]
    perm = jax.random.permutation(key, n)
    mbs = jax.tree_util.tree_map(lambda x: x[perm].reshape((m, n // m) + x.shape[1:]), carry[2])
    (params, opt_state), aux = jax.lax.scan(minibatch_step, carry[:2], mbs)
    return (params, opt_state, carry[2]), aux

  def learn(params, opt_state, batch: Batch, key):
    keys = jax.random.split(key, config.update_epochs)
    (params, opt_state, _), aux = jax.lax.scan(epoch, (params, opt_state, batch), keys)
    return params, opt_state, jax.tree_util.tree_map(jnp.mean, aux)
  return learn


def make_train_fns(config: PPOConfig, env: Environment, agent_config: AgentConfig,
                   num_updates: int, chunk: int | None = None,
                   env_params: PyTree | None = None) -> TrainFns:
  """Builds ``init``, ``run_chunk`` and ``train`` of a PPO run (per seed).

  Args:
    config: PPO settings (``num_envs``, ``rollout_len``: ``T * B`` steps per update).
    env: a JAX-native environment (static).
    agent_config: the agent network (``lpg.networks``).
    num_updates: ``U`` updates; a run takes ``U * T * B`` environment steps.
    chunk: updates per ``run_chunk`` call (default: all).
    env_params: fixed task parameters; default ``env.sample_params`` per seed.
  Returns:
    ``meta_test.train.TrainFns`` whose state is a ``TrainState`` and whose
    metrics are ``PPOMetrics``; ``run_chunk`` skips updates ``>= num_updates``.
  """
  if int(num_updates) < 1:
    raise ValueError(f"num_updates must be >= 1, got {num_updates}")
  chunk = int(num_updates if chunk is None else min(max(int(chunk), 1), num_updates))
  net = make_network(config, env, agent_config)
  optimizer = make_optimizer(config, int(num_updates))
  learn = make_learner(config, net, optimizer)

  def init(key: jax.Array) -> TrainState:
    k_env, k_reset, k_agent, k_run = jax.random.split(key, 4)
    ep = env.sample_params(k_env) if env_params is None else env_params
    params = net.init(k_agent)
    return TrainState(agent_params=params, opt_state=optimizer.init(params), env_params=ep,
                      env=reset_envs(env, ep, k_reset, config.num_envs), key=k_run)

  def update(state: TrainState) -> tuple[TrainState, PPOMetrics]:
    key, k_roll, k_learn = jax.random.split(state.key, 3)
    params = state.agent_params
    rollout, carry, stats = unroll(env, state.env_params, lambda o: net.apply(params, o).logits,
                                   state.env, k_roll, config.rollout_len)
    batch = make_batch(config, net, params, rollout)
    new_params, opt_state, aux = learn(params, state.opt_state, batch, k_learn)
    ent = jnp.mean(entropy_from_logits(net.apply(params, batch.obs).logits))
    metrics = PPOMetrics(return_sum=stats.return_sum, episodes=stats.count,
                         reward_sum=rollout.rewards.sum(), loss=aux["loss"], entropy=ent,
                         value_loss=aux["value_loss"], approx_kl=aux["approx_kl"],
                         clip_frac=aux["clip_frac"])
    return TrainState(new_params, opt_state, state.env_params, carry, key), metrics

  def skip(state: TrainState) -> tuple[TrainState, PPOMetrics]:
    return state, PPOMetrics(*[jnp.zeros((), jnp.float32)] * len(PPOMetrics._fields))

  def run_chunk(state: TrainState, offset: jax.Array) -> tuple[TrainState, PPOMetrics]:
    exact = num_updates % chunk == 0
    body = lambda s, i: update(s) if exact else jax.lax.cond(i < num_updates, update, skip, s)
    return jax.lax.scan(body, state, offset + jnp.arange(chunk))

  def train(key: jax.Array) -> tuple[TrainState, PPOMetrics]:
    return jax.lax.scan(lambda s, _: update(s), init(key), None, length=num_updates)

  return TrainFns(init=init, run_chunk=run_chunk, train=train, net=net, chunk=chunk,
                  num_updates=int(num_updates), steps_per_update=config.steps_per_update)


def make_train(config: PPOConfig, env: Environment, agent_config: AgentConfig,
               num_updates: int, env_params: PyTree | None = None) -> Callable:
  """``train(key) -> (TrainState, PPOMetrics [U])``, the whole run in one function;
  ``jax.jit(jax.vmap(train))(keys)`` runs ``S`` seeds (metrics ``[S, U]``)."""
  return make_train_fns(config, env, agent_config, num_updates, env_params=env_params).train


def num_updates_for(config: PPOConfig, steps: int) -> int:
  """Updates needed for at least ``steps`` environment steps per seed."""
  return max(1, math.ceil(int(steps) / config.steps_per_update))


# ------------------------------------------------- the lpg-apply algorithm table
class PPORule(UpdateRule):
  """PPO's entry in the algorithm table: holds a ``PPOConfig`` and asks for the
  value head.  It is not an inner-update rule (PPO takes many minibatch steps
  per rollout); ``make_ppo_train_fns`` runs it.  ``targets`` / ``agent_loss``
  raise."""

  name = "ppo"

  def __init__(self, config: PPOConfig = PPOConfig()):
    self.config = config

  def head_sizes(self) -> dict[str, int]:
    return {"v": 0}

  def targets(self, params, rollout, agent_out, hypers) -> RuleOutputs:
    raise NotImplementedError("PPO runs through meta_test.ppo.make_ppo_train_fns")

  def agent_loss(self, agent_out, targets, rollout, hypers):
    raise NotImplementedError("PPO runs through meta_test.ppo.make_ppo_train_fns")


def make_ppo_train_fns(env: Environment, rule: PPORule, rule_params: PyTree,
                       agent_config: AgentConfig, optimizer_config: OptimizerConfig,
                       hypers: InnerHypers, num_envs: int, rollout_len: int, num_updates: int,
                       chunk: int | None = None, env_params: PyTree | None = None) -> TrainFns:
  """``meta_test.train.make_train_fns``'s argument list for PPO.

  ``rule.config`` gives every PPO setting except those the caller's plan
  decides: ``num_envs``, ``rollout_len``, ``hypers.learning_rate``,
  ``hypers.gamma`` and ``optimizer_config.max_grad_norm`` replace the config's
  (pass ``PPO_DEFAULTS[kind]``'s values for the published settings).
  ``rule_params`` and the optimiser's name are ignored (PPO uses Adam).
  """
  del rule_params
  config = dataclasses.replace(rule.config, num_envs=int(num_envs), rollout_len=int(rollout_len),
                               learning_rate=float(hypers.learning_rate),
                               gamma=float(hypers.gamma),
                               max_grad_norm=float(optimizer_config.max_grad_norm))
  return make_train_fns(config, env, agent_config, num_updates, chunk=chunk, env_params=env_params)
