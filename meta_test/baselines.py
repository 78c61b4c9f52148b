"""Hand-designed update rules behind the ``UpdateRule`` interface.

They go through ``lpg.update.inner_update`` exactly as the learned rule does
(same agent networks, optimisers, rollouts), so LPG and the baselines are
compared on equal terms.

* ``A2CRule``: advantage actor-critic (Mnih et al. 2016) with GAE advantages
  (Schulman et al. 2016) from the agent's own value head ``v``.
* ``RandomRule``: a rule whose loss is zero.  Agents start with zero policy
  logits (``lpg.networks`` zero-initialises the policy head), so an agent
  trained by it stays the uniform random policy: the random baseline of reports.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpg.returns import batched_gae
from lpg.rule import InnerHypers, UpdateRule, entropy_from_logits, log_prob
from lpg.types import AgentOutputs, PyTree, Rollout, RuleOutputs

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class A2CConfig:
  """A2C loss weights and advantage estimator.

  Attributes:
    gae_lambda: lambda of the GAE advantages; 1.0 gives n-step (rollout-length)
      returns [chosen: 0.95, Schulman et al. 2016; also the meta-objective's].
    value_coef: weight of ``(v - G)^2`` [chosen: 0.5, the common A2C/PPO value].
    entropy_coef: weight of the policy-entropy bonus [chosen: 0.01, Mnih et al.
      2016 / MinAtar's actor-critic].
    normalize_advantages: standardise advantages over the batch [chosen: False,
      plain A2C].
    learning_rate, num_envs, rollout_len: the run's step size, ``B`` and ``T``;
      ``None``: ``meta_test.plan.DEFAULTS`` (flags override both).
    separate_value: the value head on a torso of its own
      (``lpg.networks.AgentConfig.separate_value``).
    anneal_lr: step size decayed linearly to 0 (``meta_test.train.RunConfig.anneal_lr``).

  ``A2C_DEFAULTS`` holds the per-observation-kind choices and what each reproduces.
  """
  gae_lambda: float = 0.95
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  normalize_advantages: bool = False
  learning_rate: float | None = None
  num_envs: int | None = None
  rollout_len: int | None = None
  separate_value: bool = False
  anneal_lr: bool = False

  def __post_init__(self):
    if not 0.0 <= self.gae_lambda <= 1.0:
      raise ValueError(f"A2CConfig.gae_lambda must lie in [0, 1], got {self.gae_lambda}")
    if self.value_coef < 0 or self.entropy_coef < 0:
      raise ValueError("A2CConfig.value_coef and entropy_coef must be >= 0")


# Per observation kind (``lpg-apply --algo a2c`` without flags):
# vector: 16 envs x 8 steps, advantage normalisation, value_coef 0.1, Adam 3e-3 annealed
#   linearly to 0, entropy 0.01, value head on its own torso [chosen, measured on CPU with
#   lpg-apply, 500k steps, 3 seeds (keys split from PRNGKey(0)): CartPole 498.3 +- 2.4,
#   Acrobot -84.9 +- 1.0; at Adam 1e-3: 278.3 / -84.5, at 2e-3 CartPole 368.5;
#   8 x 5 at 1e-3: CartPole 64.8; without the separate torso Acrobot
#   stays at -500 (shared features blow up, the policy saturates), as in sb3 / purejaxrl
#   actor-critics, which keep policy and value networks apart].
# image: Adam 3e-3, 64 x 20 [measured: issue 14's table, Breakout 5M steps 31.5 +- 17.0
#   (3 seeds, H100) against 13.3 at the former 1e-3; CPU, default flags: 28.06 +- 3.58, 3 seeds].
# index: the plan's tabular defaults (SGD 40, 64 x 20) [measured: chain/short ~1.0 at 100k].
A2C_DEFAULTS: dict[str, A2CConfig] = {
    "vector": A2CConfig(value_coef=0.1, normalize_advantages=True, learning_rate=3e-3,
                        num_envs=16, rollout_len=8, separate_value=True, anneal_lr=True),
    "image": A2CConfig(learning_rate=3e-3),
    "index": A2CConfig(),
}


def a2c_targets(rollout: Rollout, v: jax.Array, gamma, lambda_) -> tuple[jax.Array, jax.Array]:
  """GAE(``lambda_``) advantages and their value targets, both ``[T, B]``.

  ``v`` ``[T+1, B]`` are the agent's values (stop-gradient them for plain A2C);
  discounts ``gamma * rollout.bootstrap_mask`` ``[T, B]`` (no bootstrap across an
  episode end); returns ``(adv, adv + v[:-1])``.
  """
  discount = gamma * rollout.bootstrap_mask                              # [T, B]
  adv = batched_gae(rollout.rewards, discount, v, lambda_)
  return adv, adv + v[:-1]


class A2CRule(UpdateRule):
  """Advantage actor-critic as an update rule.

  Targets (``targets``, computed outside the differentiated loss):
  ``v = agent_out.heads["v"]`` ``[T+1, B]``; discounts ``gamma *
  rollout.bootstrap_mask`` ``[T, B]``; ``pi_hat = GAE(lambda)`` advantages
  ``[T, B]``; ``extras["returns"] = pi_hat + v[:-1]`` ``[T, B]``.

  Loss: ``mean(-adv * log pi(a|s) + value_coef * (v - G)^2 - entropy_coef * H(pi))``.
  """

  name = "a2c"

  def __init__(self, config: A2CConfig = A2CConfig()):
    self.config = config

  def head_sizes(self) -> dict[str, int]:
    return {"v": 0}

  def targets(self, params: PyTree, rollout: Rollout, agent_out: AgentOutputs,
              hypers: InnerHypers) -> RuleOutputs:
    del params
    adv, returns = a2c_targets(rollout, sg(agent_out.heads["v"]), hypers.gamma,
                               self.config.gae_lambda)
    if self.config.normalize_advantages:
      adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return RuleOutputs(pi_hat=sg(adv), y_hat=None, extras={"returns": sg(returns)})

  def agent_loss(self, agent_out: AgentOutputs, targets: RuleOutputs, rollout: Rollout,
                 hypers: InnerHypers) -> tuple[jax.Array, dict]:
    del hypers
    logits = agent_out.logits[:-1]
    pg = jnp.mean(targets.pi_hat * log_prob(logits, rollout.actions))
    v_loss = jnp.mean(jnp.square(agent_out.heads["v"][:-1] - targets.extras["returns"]))
    ent = jnp.mean(entropy_from_logits(logits))
    loss = -pg + self.config.value_coef * v_loss - self.config.entropy_coef * ent
    return loss, {"pg": pg, "value_loss": v_loss, "entropy": ent}


class RandomRule(UpdateRule):
  """The uniform random policy: a zero loss, so agents never leave their zero init."""

  name = "random"

  def head_sizes(self) -> dict[str, int]:
    return {}

  def targets(self, params, rollout, agent_out, hypers) -> RuleOutputs:
    del params, agent_out, hypers
    return RuleOutputs(pi_hat=jnp.zeros(rollout.rewards.shape, jnp.float32))

  def agent_loss(self, agent_out, targets, rollout, hypers):
    del targets, rollout, hypers
    # Zero, but still a function of the agent so that gradients are defined (all zero).
    loss = 0.0 * jnp.sum(agent_out.logits)
    return loss, {}

