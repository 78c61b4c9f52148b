"""The inner update: one agent step from a rollout, through an optax optimiser.

``theta += lr * optimiser(grad E[...])`` where the direction is the gradient of
the rule's ``agent_loss``.  The rule's targets are computed from the agent's
outputs *outside* the differentiated loss, so the inner gradient treats them as
constants (the "stop-gradient w.r.t. theta" of LPG), while an outer
differentiation (the meta-gradient) still sees how they depend on theta and on
the rule's parameters: the total derivative is exact.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import optax

from lpg.networks import AgentNetwork
from lpg.rule import InnerHypers, LifetimeProgress, UpdateRule
from lpg.types import PyTree, Rollout, RuleOutputs

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Inner optimiser; the step size lives in ``InnerHypers`` (per agent).

  Attributes:
    name: ``sgd`` (tabular agents [ported]) or ``adam`` (networks [ported]).
    max_grad_norm: global-norm clipping [ported: 0.5]; ``0`` disables it.
    adam_eps: Adam's epsilon [chosen: 1e-5, robust in float32 meta-gradients].
    adam_eps_root: added inside Adam's square root [chosen: 1e-12].  Without it
      the meta-gradient through Adam is NaN wherever a gradient entry is exactly
      zero (d sqrt(v)/dv is infinite at v = 0), e.g. weights of image pixels
      that are always empty.
  """
  name: str = "sgd"
  max_grad_norm: float = 0.5
  adam_eps: float = 1e-5
  adam_eps_root: float = 1e-12

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"inner optimiser must be one of {OPTIMIZERS}, got {self.name!r}")
    if self.max_grad_norm < 0:
      raise ValueError("max_grad_norm must be >= 0")


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """The direction part of the optimiser (unit step size; ``InnerHypers`` scales it).

  Adam's and SGD's updates are linear in the learning rate, so scaling the
  unit-rate update by a per-agent rate is exactly the optimiser at that rate.
  """
  parts = []
  if config.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  parts.append(optax.scale_by_adam(eps=config.adam_eps, eps_root=config.adam_eps_root) if config.name == "adam" else optax.identity())
  return optax.chain(*parts)


class UpdateResult(NamedTuple):
  params: PyTree
  opt_state: PyTree
  targets: RuleOutputs
  metrics: dict


def inner_update(rule: UpdateRule, rule_params: PyTree, net: AgentNetwork,
                 optimizer: optax.GradientTransformation, agent_params: PyTree,
                 opt_state: PyTree, rollout: Rollout, hypers: InnerHypers,
                 progress: LifetimeProgress | None = None) -> UpdateResult:
  """One agent update from ``rollout`` (``[T(+1), B]``) under ``rule``.

  ``progress`` (n updates done of the lifetime's planned N, see
  ``lpg.rule.make_progress``) reaches only lifetime-aware rules
  (``rule.needs_progress``); other rules ignore it, so callers may always
  pass it when they know it.  A lifetime-aware rule without it is an error.

  Returns the new parameters and optimiser state, the rule's targets (for the
  meta-objective's regularisers) and the loss metrics.
  """
  agent_out = net.apply(agent_params, rollout.obs)
  if rule.needs_progress:
    if progress is None:
      raise ValueError(f"rule {rule.name!r} is lifetime-aware: pass progress=make_progress(n, N) "
                       "(updates done, updates planned) to inner_update")
    targets = rule.targets(rule_params, rollout, agent_out, hypers, progress=progress)
  else:
    targets = rule.targets(rule_params, rollout, agent_out, hypers)

  def loss_fn(p):
    return rule.agent_loss(net.apply(p, rollout.obs), targets, rollout, hypers)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(agent_params)
  updates, opt_state = optimizer.update(grads, opt_state, agent_params)
  updates = jax.tree_util.tree_map(lambda u: -hypers.learning_rate * u, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return UpdateResult(optax.apply_updates(agent_params, updates), opt_state, targets, metrics)
