"""Meta-gradient RL (Xu, van Hasselt and Silver 2018; LPG_SPEC section 7): an A2C
agent that learns the discount ``gamma`` and the ``lambda`` of its return online.

Meta-parameters ``eta = (gamma, lambda)``, each ``sigmoid`` of an unconstrained
logit (so both stay in (0, 1)).  One iteration (online cross-validation):

1. ``theta' = inner_update(theta, tau; eta)``: an A2C step on trajectory ``tau``
   whose advantages and value targets are ``lambda``-returns with discount
   ``gamma`` from the agent's own value head (GAE), through the real optax
   optimiser (``lpg.update.inner_update`` with ``MGRLRule``, whose rule
   parameters *are* the logits, so the targets are differentiable in eta).
2. ``tau'`` is collected with ``theta'``.
3. Score ``theta'`` on ``tau'`` with a *fixed reference* return (``gamma' =
   0.995``, ``lambda' = 1`` by default): ``J = -mean(A' log pi'(a|s)) +
   meta_value_coef * mean((v' - G')^2)`` (``reference_loss``).
4. ``d J / d eta`` by autodiff through step 1 (the optimiser state update
   included), and an Adam step on the logits.
5. ``tau'`` is the next iteration's ``tau``: no samples are spent on the meta step.

In the compiled loop (``make_mgrl_train``: ``meta_test.train.make_train`` with the
meta-step ``make_mgrl_hook``) an iteration is laid out like
A2C's: collect a rollout with the current ``theta``, then
update ``theta`` on it.  The meta step sits between the two: it scores the
current ``theta`` (produced by the previous iteration's update) on the rollout
just collected, differentiating through the previous update, recomputed from
its stored inputs (``theta``, optimiser state and rollout of the previous
iteration).  So an mgrl run spends exactly the environment steps, PRNG keys and
agent updates of an A2C run, and with ``meta_lr = 0`` it *is* that A2C run.

``eta_input``: the agent also sees ``(gamma, lambda)`` as inputs (Xu et al.
section 1.4).  MLP / conv agents concatenate them to the flattened features
before the torso MLP; tabular agents add a zero-initialised linear function of
``(gamma, lambda)`` to every table row lookup (policy and value).  The input
path is a stop-gradient (conditioning only): the meta-gradient flows through
the return targets of the update, as in the paper's derivation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs.base import Environment, ObsSpec
from lpg.networks import AgentConfig, AgentNetwork, make_agent_network
from lpg.returns import batched_lambda_returns
from lpg.rule import InnerHypers, UpdateRule, log_prob
from lpg.types import AgentOutputs, PyTree, Rollout, RuleOutputs
from lpg.update import inner_update, make_optimizer
from meta_test.baselines import A2CConfig, A2CRule, a2c_targets
from meta_test.train import MetaHook, MetaOut, RunConfig, TrainFns, make_train

sg = jax.lax.stop_gradient
_A2C = A2CConfig()


@dataclasses.dataclass(frozen=True)
class MGRLConfig:
  """Meta-gradient RL (Xu et al. 2018) on top of A2C.

  Attributes:
    gamma: initial discount [chosen: 0.99, ``lpg-apply``'s A2C gamma, so mgrl
      starts where the A2C baseline stays].
    lambda_: initial lambda of the GAE / lambda-return [chosen: 0.95,
      ``A2CConfig.gae_lambda``].
    meta_lr: Adam step size on the two logits [chosen: 1e-2; Xu et al. do not
      give one for this setting; ``0`` freezes eta, i.e. plain A2C].
    ref_gamma: gamma' of the fixed reference return of the meta-objective
      [paper/LPG_SPEC section 7: 0.995].
    ref_lambda: lambda' of the reference return [paper: 1.0].
    value_coef: inner value-loss weight [``A2CConfig.value_coef``: 0.5].
    entropy_coef: inner entropy-bonus weight [``A2CConfig.entropy_coef``: 0.01].
    meta_value_coef: weight of the value loss in the meta-objective [chosen:
      0.5, the inner weight]; no entropy term there (Xu et al.).
    meta_adam_eps: epsilon of the meta Adam [optax default 1e-8].
    eta_input: feed ``(gamma, lambda)`` to the agent's networks [paper: on;
      here off by default so ``meta_lr = 0`` is exactly the A2C baseline].
  """
  gamma: float = 0.99
  lambda_: float = _A2C.gae_lambda
  meta_lr: float = 1e-2
  ref_gamma: float = 0.995
  ref_lambda: float = 1.0
  value_coef: float = _A2C.value_coef
  entropy_coef: float = _A2C.entropy_coef
  meta_value_coef: float = _A2C.value_coef
  meta_adam_eps: float = 1e-8
  eta_input: bool = False

  def __post_init__(self):
    for f in ("gamma", "lambda_"):
      if not 0.0 < getattr(self, f) < 1.0:
        raise ValueError(f"MGRLConfig.{f} must lie in (0, 1) (it is a sigmoid), "
                         f"got {getattr(self, f)}")
    for f in ("ref_gamma", "ref_lambda"):
      if not 0.0 <= getattr(self, f) <= 1.0:
        raise ValueError(f"MGRLConfig.{f} must lie in [0, 1], got {getattr(self, f)}")
    for f in ("meta_lr", "value_coef", "entropy_coef", "meta_value_coef"):
      if getattr(self, f) < 0:
        raise ValueError(f"MGRLConfig.{f} must be >= 0, got {getattr(self, f)}")

  @property
  def a2c(self) -> A2CConfig:
    """The A2C loss this agent minimises (its ``gae_lambda`` is the initial lambda)."""
    return A2CConfig(gae_lambda=self.lambda_, value_coef=self.value_coef,
                     entropy_coef=self.entropy_coef)


# ---------------------------------------------------------------- meta-parameters
class Eta(NamedTuple):
  """Unconstrained meta-parameters (scalars; ``[S]`` when vmapped over seeds)."""
  gamma_logit: jax.Array
  lambda_logit: jax.Array

  @property
  def gamma(self) -> jax.Array:
    return jax.nn.sigmoid(self.gamma_logit)

  @property
  def lambda_(self) -> jax.Array:
    return jax.nn.sigmoid(self.lambda_logit)

  def values(self) -> jax.Array:
    """``[..., 2]``: ``(gamma, lambda)``."""
    return jnp.stack([self.gamma, self.lambda_], axis=-1)


def logit_for(p: float, dtype=jnp.float32) -> jax.Array:
  """The ``dtype`` logit ``x`` whose ``sigmoid(x)`` is closest to ``dtype(p)``.

  ``log(p / (1 - p))`` rounded to float32 may miss by an ulp (0.99 does); a
  few neighbouring floats are tried so that the initial ``gamma`` / ``lambda``
  equal the A2C constants exactly where possible.
  """
  target = np.asarray(p, dtype)
  x = np.asarray(math.log(p / (1.0 - p)), dtype)
  best, best_err = x, None
  for _ in range(64):
    err = float(abs(np.asarray(jax.nn.sigmoid(jnp.asarray(x)), np.float64) - float(target)))
    if best_err is None or err < best_err:
      best, best_err = x, err
    if err == 0.0:
      break
    up = float(np.asarray(jax.nn.sigmoid(jnp.asarray(x)))) < float(target)
    x = np.nextafter(x, np.asarray(np.inf if up else -np.inf, dtype))
  return jnp.asarray(best, dtype)


def init_eta(config: MGRLConfig, dtype=jnp.float32) -> Eta:
  return Eta(logit_for(config.gamma, dtype), logit_for(config.lambda_, dtype))


# ---------------------------------------------------------------------- the rule
class MGRLRule(UpdateRule):
  """A2C whose return uses the meta-parameters passed as the rule's parameters.

  ``targets(eta, ...)``: ``v = sg(agent_out.heads["v"])`` ``[T+1, B]``;
  discounts ``sigmoid(eta.gamma_logit) * rollout.bootstrap_mask`` ``[T, B]``;
  ``pi_hat = GAE(sigmoid(eta.lambda_logit))`` ``[T, B]``; ``extras["returns"] =
  pi_hat + v[:-1]``.  Unlike ``A2CRule`` the targets are not stop-gradiented,
  so a derivative w.r.t. ``eta`` passes through them (``inner_update`` already
  treats targets as constants of the agent's own gradient).  ``hypers.gamma``
  is ignored.  The loss is ``A2CRule``'s.
  """

  name = "mgrl"

  def __init__(self, config: MGRLConfig = MGRLConfig()):
    self.config = config
    self._a2c = A2CRule(config.a2c)

  def head_sizes(self) -> dict[str, int]:
    return {"v": 0}

  def init(self, key: jax.Array) -> Eta:
    del key
    return init_eta(self.config)

  def targets(self, params: Eta, rollout: Rollout, agent_out: AgentOutputs,
              hypers: InnerHypers) -> RuleOutputs:
    del hypers
    adv, returns = a2c_targets(rollout, sg(agent_out.heads["v"]), params.gamma, params.lambda_)
    return RuleOutputs(pi_hat=adv, y_hat=None, extras={"returns": returns})

  def agent_loss(self, agent_out, targets, rollout, hypers):
    return self._a2c.agent_loss(agent_out, targets, rollout, hypers)


def reference_loss(agent_out: AgentOutputs, rollout: Rollout, ref_gamma: float,
                   ref_lambda: float, value_coef: float,
                   target_out: AgentOutputs | None = None) -> tuple[jax.Array, dict]:
  """The meta-objective: A2C loss under the fixed reference return (to minimise).

  Args:
    agent_out: outputs of the updated agent on ``rollout.obs`` ``[T+1, B]``.
    rollout: ``tau'``, collected by the updated agent.
    ref_gamma, ref_lambda: ``gamma'``, ``lambda'`` of the reference return ``G'``.
    value_coef: weight of ``(v - G')^2``.
    target_out: outputs the targets ``G'`` and ``A'`` are computed from
      (default ``agent_out``).  Always a stop-gradient: the meta-gradient is the
      semi-gradient of Xu et al., ``dJ/d theta'`` with the targets held fixed.
  Returns:
    ``-mean(sg(G' - v) log pi(a|s)) + value_coef * mean((v - sg(G'))^2)`` and
    its parts; ``G'`` bootstraps from ``sg(v)``.
  """
  v = agent_out.heads["v"]                                             # [T+1, B]
  v_target = sg((agent_out if target_out is None else target_out).heads["v"])
  discount = ref_gamma * rollout.bootstrap_mask
  g = sg(batched_lambda_returns(rollout.rewards, discount.astype(rollout.rewards.dtype),
                                v_target, ref_lambda))                  # [T, B]
  adv = g - v_target[:-1]
  pg = jnp.mean(adv * log_prob(agent_out.logits[:-1], rollout.actions))
  v_loss = jnp.mean(jnp.square(v[:-1] - g))
  return -pg + value_coef * v_loss, {"pg": pg, "value_loss": v_loss}


# ---------------------------------------------------------------------- networks
class EtaNetwork(NamedTuple):
  """``init(key) -> params``; ``apply(params, obs[..., *obs_shape], eta[2]) ->
  AgentOutputs``; ``bind(eta)`` gives the ``AgentNetwork`` at fixed ``eta``
  (a stop-gradient input)."""
  init: Callable
  apply: Callable

  def bind(self, eta_values: jax.Array) -> AgentNetwork:
    return AgentNetwork(init=self.init, apply=lambda p, o: self.apply(p, o, sg(eta_values)))


def make_mgrl_network(config: AgentConfig, obs_spec: ObsSpec, num_actions: int,
                      head_sizes: dict[str, int], eta_input: bool) -> EtaNetwork:
  """The agent of ``lpg.networks``, optionally conditioned on ``(gamma, lambda)``.

  Without ``eta_input`` it is ``make_agent_network`` unchanged (eta ignored).
  With it: tabular agents add ``eta @ W`` (``W`` ``[2, width]``, zero init,
  one per table) to each looked-up row; MLP / conv agents concatenate ``eta``
  ``[.., 2]`` to the flattened features before the torso MLP.
  """
  if not eta_input:
    base = make_agent_network(config, obs_spec, num_actions, head_sizes)
    return EtaNetwork(init=base.init, apply=lambda p, o, e: base.apply(p, o))
  return EtaNetwork(*make_agent_network(config, obs_spec, num_actions, head_sizes, cond_size=2))


# -------------------------------------------------------------- the meta-gradient
class MGRLProblem(NamedTuple):
  """Static pieces of one meta step (hashable callables and configs)."""
  rule: MGRLRule
  net: EtaNetwork
  optimizer: optax.GradientTransformation


def meta_loss(problem: MGRLProblem, eta: Eta, agent_params: PyTree, opt_state: PyTree,
              rollout: Rollout, next_rollout: Rollout, hypers: InnerHypers,
              net_eta: jax.Array | None = None, target_params: PyTree | None = None
              ) -> tuple[jax.Array, dict]:
  """``J(eta)``: update ``agent_params`` on ``rollout`` under ``eta``, score on ``next_rollout``.

  Args:
    problem: rule, network and inner optimiser.
    eta: the logits (differentiate w.r.t. these).
    agent_params, opt_state: ``theta`` and its optimiser state before the update.
    rollout: ``tau`` ``[T(+1), B]``, the update's data.
    next_rollout: ``tau'`` ``[T(+1), B]``, collected by the updated agent.
    hypers: inner step size (``hypers.gamma`` unused).
    net_eta: ``[2]`` the ``(gamma, lambda)`` the network is conditioned on
      (``eta_input`` only; default ``eta``'s values).  Stop-gradient.
    target_params: agent parameters the reference targets come from (default:
      the updated ones, stop-gradient).  Fixing them to the updated parameters
      at some ``eta0`` makes the loss a plain function of ``eta`` whose
      derivative at ``eta0`` is the meta-gradient (for finite differences).
  Returns:
    The scalar reference loss of the updated agent and its parts.
  """
  cfg = problem.rule.config
  net = problem.net.bind(eta.values() if net_eta is None else net_eta)
  res = inner_update(problem.rule, eta, net, problem.optimizer, agent_params, opt_state,
                     rollout, hypers)
  target_out = None if target_params is None else net.apply(target_params, next_rollout.obs)
  return reference_loss(net.apply(res.params, next_rollout.obs), next_rollout, cfg.ref_gamma,
                        cfg.ref_lambda, cfg.meta_value_coef, target_out)


def finite_or_zero(grads: PyTree) -> PyTree:
  """``grads``, or zeros if any entry is not finite.

  ``optax.clip_by_global_norm`` has a NaN derivative where the agent's gradient
  is exactly zero (``where`` over ``g / |g|``); that happens early on sparse
  tasks (no reward and a uniform policy yet).  Such a meta step is skipped.
  """
  ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
  return jax.tree_util.tree_map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)


# -------------------------------------------------------------------- training
class MGRLMeta(NamedTuple):
  """The meta-step's state (``RunState.meta``; leading ``[S]`` dim when vmapped).

  ``prev_*`` are the inputs of the previous iteration's agent update (the one
  the next meta step differentiates through).
  """
  eta: Eta
  meta_opt_state: PyTree
  prev_params: PyTree
  prev_opt_state: PyTree
  prev_rollout: Rollout
  prev_eta_values: jax.Array


def make_meta_optimizer(config: MGRLConfig) -> optax.GradientTransformation:
  return optax.adam(config.meta_lr, eps=config.meta_adam_eps)


def make_mgrl_hook(env: Environment, config: RunConfig, rule: MGRLRule) -> MetaHook:
  """The meta-step of ``make_train`` for meta-gradient RL (module docstring, steps 1-5).

  The agent network is conditioned on ``(gamma, lambda)`` when ``rule.config.eta_input``;
  the rule parameters of each update are the new ``eta``; ``MetaOut.params`` logs
  ``gamma`` and ``lambda`` as used by the update.
  """
  cfg = rule.config
  eta_net = make_mgrl_network(config.agent, env.obs_spec, env.num_actions, rule.head_sizes(),
                              cfg.eta_input)
  meta_opt = make_meta_optimizer(cfg)
  problem = MGRLProblem(rule, eta_net, make_optimizer(config.optimizer))
  hypers, t, b = config.hypers, config.rollout_len, config.num_envs
  eta0 = init_eta(cfg)

  def init(agent_params, opt_state, carry) -> MGRLMeta:
    # A placeholder previous rollout (never used: iteration 0 skips the meta step).
    obs = jnp.broadcast_to(carry.obs[None], (t + 1,) + carry.obs.shape)
    zeros = jnp.zeros((t, b))
    dummy = Rollout(obs=obs, actions=zeros.astype(jnp.int32), rewards=zeros,
                    terminated=zeros.astype(bool), truncated=zeros.astype(bool))
    return MGRLMeta(eta=eta0, meta_opt_state=meta_opt.init(eta0), prev_params=agent_params,
                    prev_opt_state=opt_state, prev_rollout=dummy, prev_eta_values=eta0.values())

  def meta_step(meta: MGRLMeta, rollout: Rollout):
    def loss_fn(eta):
      return meta_loss(problem, eta, meta.prev_params, meta.prev_opt_state, meta.prev_rollout,
                       rollout, hypers, meta.prev_eta_values)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(meta.eta)
    updates, meta_opt_state = meta_opt.update(finite_or_zero(grads), meta.meta_opt_state, meta.eta)
    return optax.apply_updates(meta.eta, updates), meta_opt_state, loss

  def no_meta_step(meta: MGRLMeta, rollout: Rollout):
    del rollout
    return meta.eta, meta.meta_opt_state, jnp.zeros((), jnp.float32)

  def step(meta: MGRLMeta, i, agent_params, opt_state, rollout):
    # The predicate is not batched over seeds (``i`` is shared): a real branch under vmap.
    eta, meta_opt_state, loss = jax.lax.cond(i > 0, meta_step, no_meta_step, meta, rollout)
    values = eta.values()
    new = MGRLMeta(eta=eta, meta_opt_state=meta_opt_state, prev_params=agent_params,
                   prev_opt_state=opt_state, prev_rollout=rollout, prev_eta_values=values)
    return new, MetaOut(rule_params=eta, loss=loss,
                        params={"gamma": values[0], "lambda": values[1]})

  return MetaHook(net=eta_net.bind(eta0.values()),
                  net_at=lambda meta: eta_net.bind(meta.eta.values()), init=init, step=step)


def make_mgrl_train(env: Environment, config: RunConfig, rule: MGRLRule,
                    env_params: PyTree | None = None) -> TrainFns:
  """``meta_test.train.make_train`` with the mgrl meta-step; ``rule.config`` holds every
  mgrl setting and the logits start at ``init_eta(rule.config)``."""
  return make_train(env, config, rule, None, env_params=env_params,
                    meta_hook=make_mgrl_hook(env, config, rule))
