"""Update rules: one interface for the learned LPG rule and hand-designed ones.

An update rule turns a rollout and the agent's outputs on it into targets
(``targets``) and says how the agent learns from them (``agent_loss``).  It also
says which heads the agent needs besides its policy (``head_sizes``).  The
rule's parameters are always an argument, so the same code path serves
meta-training (gradients reach them) and frozen use (they are constants).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from lpg.returns import batched_lambda_returns
from lpg.types import AgentOutputs, PyTree, Rollout, RuleOutputs


class InnerHypers(NamedTuple):
  """Per-agent inner-loop hyperparameters (scalars; vmapped over agents).

  Attributes:
    learning_rate: agent step size [ported: tabular SGD tens, networks Adam 5e-4..1e-3].
    alpha_y: weight of the y KL term [ported: 0.5].
    gamma: discount given to the rule as input, and used by hand-designed rules.
  """
  learning_rate: jax.Array
  alpha_y: jax.Array
  gamma: jax.Array


def make_hypers(learning_rate, alpha_y=0.5, gamma=0.99) -> InnerHypers:
  return InnerHypers(jnp.asarray(learning_rate, jnp.float32), jnp.asarray(alpha_y, jnp.float32),
                     jnp.asarray(gamma, jnp.float32))


class LifetimeProgress(NamedTuple):
  """Where an agent stands in its lifetime (scalars; vmapped over agents).

  Attributes:
    done: n, agent updates done before the current one (0 .. N-1), float32.
    planned: N, the agent updates the lifetime is planned to last, float32.
  """
  done: jax.Array
  planned: jax.Array


def make_progress(done, planned) -> LifetimeProgress:
  return LifetimeProgress(jnp.asarray(done, jnp.float32), jnp.asarray(planned, jnp.float32))


class UpdateRule(abc.ABC):
  """The interface every update rule implements (learned or hand-designed).

  Lifetime-aware rules (``needs_progress``) also take a ``LifetimeProgress``
  as ``targets(..., progress=...)``; ``lpg.update.inner_update`` passes it to
  them only, so rules written without that argument keep working.
  """

  name: str = "rule"
  needs_progress: bool = False

  @abc.abstractmethod
  def head_sizes(self) -> dict[str, int]:
    """Agent heads besides the policy: name -> width (0 for a scalar head)."""

  def init(self, key: jax.Array) -> PyTree:
    """Rule parameters (an empty dict for rules without any)."""
    del key
    return {}

  @abc.abstractmethod
  def targets(self, params: PyTree, rollout: Rollout, agent_out: AgentOutputs,
              hypers: InnerHypers) -> RuleOutputs:
    """Targets for every step.

    Args:
      params: rule parameters.
      rollout: ``Rollout`` with ``[T(+1), B]`` leading dims.
      agent_out: the agent's outputs on ``rollout.obs`` (``[T+1, B, ...]``).
      hypers: inner hyperparameters.
      progress: (only rules with ``needs_progress``, as a keyword) the
        ``LifetimeProgress`` of the agent.
    Returns:
      ``RuleOutputs`` with ``[T, B, ...]`` arrays.
    """

  @abc.abstractmethod
  def agent_loss(self, agent_out: AgentOutputs, targets: RuleOutputs, rollout: Rollout,
                 hypers: InnerHypers) -> tuple[jax.Array, dict]:
    """Scalar loss whose gradient w.r.t. the agent is its update direction."""


# ------------------------------------------------------------------- the LPG rule
@dataclasses.dataclass(frozen=True)
class LPGConfig:
  """Sizes of the LPG meta-network (LPG_SPEC section 1).

  Attributes:
    hidden: LSTM width [ported: 256, GROOVE port].  Presets use 64 on CPU
      (about 16x cheaper, LPG_SPEC 6b).
    y_dim: m, the size of the prediction vector y [ported: 30].
    phi_hidden: width of the shared phi MLP, m -> phi_hidden -> 1 [ported: 16].
    lifetime_inputs: also feed the rule n/N and log N at every step (TA-LPG,
      LPG_SPEC section 9): N the agent updates the lifetime is planned to
      last, n those done.  Such a rule needs ``progress`` in ``targets``
      [default off: the rule, its parameters and its outputs are exactly
      those of a rule without the option].
    signlog_reward: feed the rule ``sign(r) * log(1 + |r|)`` instead of r
      (DiscoRL, LPG_SPEC section 9) [default off].
    normalise_reward: divide the (possibly sign-log) reward input by its root
      mean square over the rollout, ``r / sqrt(mean_{T,B} r^2 + 1e-8)``
      [chosen: per-rollout statistics, not a moving average carried in the
      agent's state, so the rule stays a pure function of one rollout; scale
      only, no mean subtraction, so the sign of a reward and "no reward" keep
      their meaning; default off].
    value_inputs: the agent gets a scalar value head ``v`` (``head_sizes``
      adds ``{"v": 0}``) trained by the inner loss towards TD(lambda) returns
      (``value_coef * mean((v - G)^2)``, as A2C), and the rule also sees the
      advantage ``G_t - v(s_t)`` (GAE) and the TD error ``r_t + gamma
      v(s_{t+1}) - v(s_t)``, each divided by its root mean square over the
      rollout (DiscoRL's normalised advantages and TD errors, LPG_SPEC
      section 9, with per-rollout statistics) [default off].
    value_lambda: lambda of the value head's returns and advantages [chosen:
      0.95, as the meta-objective's GAE].
    value_coef: weight of the value head's loss in the agent's loss [chosen:
      0.5, as ``meta_test.baselines.A2CConfig``].

  Options at their defaults leave the rule, its parameters and its outputs
  bit for bit those of a rule without them, and configs saved before they
  existed load with them off.
  """
  hidden: int = 256
  y_dim: int = 30
  phi_hidden: int = 16
  lifetime_inputs: bool = False
  signlog_reward: bool = False
  normalise_reward: bool = False
  value_inputs: bool = False
  value_lambda: float = 0.95
  value_coef: float = 0.5

  def __post_init__(self):
    for f in ("hidden", "y_dim", "phi_hidden"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"LPGConfig.{f} must be >= 1, got {getattr(self, f)}")
    if not 0.0 <= self.value_lambda <= 1.0 or self.value_coef < 0:
      raise ValueError("LPGConfig.value_lambda must lie in [0, 1] and value_coef be >= 0")


class LPGInputs(NamedTuple):
  """Per-step inputs of the LPG network; ``[T, B]`` unless stated.

  Attributes:
    reward: r_t.
    done: d_t, 1 where the episode ended at t.
    gamma: the discount.
    pi_a: pi(a_t | s_t).
    y: ``[T, B, m]`` y(s_t).
    y_next: ``[T, B, m]`` y(s_{t+1}).
    progress: n/N, only for lifetime-aware rules (else ``None``).
    log_planned: log N, only for lifetime-aware rules (else ``None``).
    advantage: RMS-normalised ``G_t - v(s_t)``, only with value inputs.
    td_error: RMS-normalised ``r_t + gamma v(s_{t+1}) - v(s_t)``, only with value inputs.
  """
  reward: jax.Array
  done: jax.Array
  gamma: jax.Array
  pi_a: jax.Array
  y: jax.Array
  y_next: jax.Array
  progress: jax.Array | None = None
  log_planned: jax.Array | None = None
  advantage: jax.Array | None = None
  td_error: jax.Array | None = None


REWARD_NORM_EPS = 1e-8


def rms_normalise(x: jax.Array) -> jax.Array:
  """``x / sqrt(mean(x^2) + 1e-8)``, the mean over all of ``x``."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x)) + REWARD_NORM_EPS)


def value_targets(rollout: Rollout, v: jax.Array, gamma, lambda_):
  """``(returns G, advantages G - v, TD errors)``, each ``[T, B]``, from values ``v`` ``[T+1, B]``.

  G is TD(lambda) with discounts ``gamma * bootstrap_mask`` (GAE(lambda) = G - v).
  """
  discount = gamma * rollout.bootstrap_mask
  returns = batched_lambda_returns(rollout.rewards, discount, v, lambda_)
  td = rollout.rewards + discount * v[1:] - v[:-1]
  return returns, returns - v[:-1], td


def lpg_inputs(rollout: Rollout, agent_out: AgentOutputs, gamma,
               progress: LifetimeProgress | None = None,
               value_lambda: float | None = None) -> LPGInputs:
  """Builds the rule's inputs from a rollout and the agent's outputs on it.

  The rule sees rewards, done flags, the discount, the probability of the
  taken action and the agent's predictions y: never observations or actions.
  With ``progress`` it also sees n/N and log N (broadcast over ``[T, B]``);
  with ``value_lambda`` the normalised advantage and TD error of the agent's
  value head ``v`` (``value_targets``).
  """
  probs = jax.nn.softmax(agent_out.logits[:-1])                       # [T, B, A]
  pi_a = jnp.take_along_axis(probs, rollout.actions[..., None], axis=-1)[..., 0]
  y_all = jax.nn.softmax(agent_out.heads["y"])                         # [T+1, B, m]
  done = rollout.done
  full = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), done.shape)
  extra = {}
  if progress is not None:
    planned = jnp.maximum(progress.planned, 1.0)
    extra = dict(progress=full(progress.done / planned), log_planned=full(jnp.log(planned)))
  if value_lambda is not None:
    _, adv, td = value_targets(rollout, agent_out.heads["v"], gamma, value_lambda)
    extra.update(advantage=rms_normalise(adv), td_error=rms_normalise(td))
  return LPGInputs(reward=rollout.rewards, done=done, gamma=full(gamma),
                   pi_a=pi_a, y=y_all[:-1], y_next=y_all[1:], **extra)


def signlog(x: jax.Array) -> jax.Array:
  """``sign(x) * log(1 + |x|)`` elementwise."""
  return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def reward_input(reward: jax.Array, config: LPGConfig) -> jax.Array:
  """The reward as the rule sees it: ``reward`` ``[T, B]`` transformed per ``config``.

  Sign-log first (``signlog_reward``), then division by the root mean square
  over the whole ``[T, B]`` rollout (``normalise_reward``).  Both off: the
  reward itself, untouched.
  """
  r = reward
  if config.signlog_reward:
    r = signlog(r)
  if config.normalise_reward:
    r = rms_normalise(r)
  return r


def _lpg_network(config: LPGConfig):
  def forward(inputs: LPGInputs):
    phi = hk.nets.MLP([config.phi_hidden, 1], name="phi")
    parts = [reward_input(inputs.reward, config)[..., None], inputs.done[..., None],
             inputs.gamma[..., None], inputs.pi_a[..., None], phi(inputs.y), phi(inputs.y_next)]
    if config.lifetime_inputs:
      if inputs.progress is None or inputs.log_planned is None:
        raise ValueError("this rule is lifetime-aware (lifetime_inputs=True): pass "
                         "progress=LifetimeProgress(n, N) to its targets / inner_update")
      parts += [inputs.progress[..., None], inputs.log_planned[..., None]]
    if config.value_inputs:
      if inputs.advantage is None or inputs.td_error is None:
        raise ValueError("this rule takes value inputs (value_inputs=True): build its inputs "
                         "with lpg_inputs(..., value_lambda=config.value_lambda)")
      parts += [inputs.advantage[..., None], inputs.td_error[..., None]]
    x = jnp.concatenate(parts, axis=-1)          # [T, B, 6] (+2 lifetime, +2 value inputs)
    core = hk.ResetCore(hk.LSTM(config.hidden, name="lstm"))
    batch = x.shape[1]
    # Backwards in time; at step t the state coming from t+1 is dropped when the
    # episode ended at t, so the output at t sees only t..end of t's episode.
    outs, _ = hk.dynamic_unroll(core, (x, inputs.done > 0.5), core.initial_state(batch),
                                time_major=True, reverse=True)
    pi_hat = hk.Linear(1, name="pi_hat")(outs)[..., 0]
    y_hat = jax.nn.softmax(hk.Linear(config.y_dim, name="y_hat")(outs))
    return pi_hat, y_hat
  return hk.without_apply_rng(hk.transform(forward))


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """Entropy ``[...]`` of the categorical distributions with ``logits`` ``[..., A]``."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def log_prob(logits: jax.Array, actions: jax.Array) -> jax.Array:
  """``log pi(a|s)`` ``[...]`` of ``actions`` ``[...]`` under ``logits`` ``[..., A]``."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], axis=-1)[..., 0]


def kl_categorical(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """KL(p || q) over the last axis, from log-probabilities."""
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


class LPGRule(UpdateRule):
  """The learned policy gradient rule: a reverse-time LSTM emitting (pi_hat, y_hat).

  Agent update (LPG_SPEC section 2): ascend
  ``pi_hat * log pi(a|s) - alpha_y * KL(y(s) || y_hat)`` averaged over the rollout.
  """

  name = "lpg"

  def __init__(self, config: LPGConfig = LPGConfig()):
    self.config = config
    self.needs_progress = bool(config.lifetime_inputs)
    self._net = _lpg_network(config)

  def head_sizes(self) -> dict[str, int]:
    if self.config.value_inputs:
      return {"y": self.config.y_dim, "v": 0}
    return {"y": self.config.y_dim}

  def init(self, key: jax.Array) -> PyTree:
    t, b, m = 2, 1, self.config.y_dim
    z = jnp.zeros((t, b))
    life = (z, z) if self.config.lifetime_inputs else (None, None)
    value = (z, z) if self.config.value_inputs else (None, None)
    dummy = LPGInputs(z, z, z, z, jnp.full((t, b, m), 1.0 / m), jnp.full((t, b, m), 1.0 / m),
                      *life, *value)
    return self._net.init(key, dummy)

  def apply(self, params: PyTree, inputs: LPGInputs) -> RuleOutputs:
    """``inputs`` ``[T, B]`` -> ``RuleOutputs(pi_hat [T, B], y_hat [T, B, m])``."""
    pi_hat, y_hat = self._net.apply(params, inputs)
    return RuleOutputs(pi_hat=pi_hat, y_hat=y_hat)

  def targets(self, params, rollout, agent_out, hypers, progress=None):
    if not self.needs_progress:
      progress = None
    if not self.config.value_inputs:
      return self.apply(params, lpg_inputs(rollout, agent_out, hypers.gamma, progress))
    lam = self.config.value_lambda
    out = self.apply(params, lpg_inputs(rollout, agent_out, hypers.gamma, progress, lam))
    returns, _, _ = value_targets(rollout, agent_out.heads["v"], hypers.gamma, lam)
    return out._replace(extras={"returns": returns})

  def agent_loss(self, agent_out, targets, rollout, hypers):
    pg = jnp.mean(targets.pi_hat * log_prob(agent_out.logits[:-1], rollout.actions))
    y_logp = jax.nn.log_softmax(agent_out.heads["y"][:-1])
    kl = jnp.mean(kl_categorical(y_logp, jnp.log(targets.y_hat + 1e-8)))
    loss = -pg + hypers.alpha_y * kl
    if not self.config.value_inputs:
      return loss, {"pg": pg, "kl_y": kl}
    v_loss = jnp.mean(jnp.square(agent_out.heads["v"][:-1] - targets.extras["returns"]))
    return loss + self.config.value_coef * v_loss, {"pg": pg, "kl_y": kl, "value_loss": v_loss}


# ------------------------------------------------------- an entropy bonus at meta-test
class EntropyBonus(UpdateRule):
  """``rule`` whose agent loss also subtracts ``coef`` x the policy's mean entropy.

  Meta-test only (``lpg-apply --entropy-bonus``): not part of any discovered rule.  A rule
  meta-trained on short lifetimes can drive its agents' policies to near-determinism long
  before a MinAtar-length run ends (the agents then stop exploring); the bonus is the
  hand-designed counterweight A2C carries (``entropy_coef``), here added to a learned rule so
  that its effect can be measured.  Targets, heads and parameters are ``rule``'s own.
  """

  def __init__(self, rule: UpdateRule, coef: float):
    if not coef >= 0:
      raise ValueError(f"entropy bonus must be >= 0, got {coef}")
    self.rule, self.coef = rule, float(coef)
    self.name, self.needs_progress = rule.name, rule.needs_progress

  def head_sizes(self):
    return self.rule.head_sizes()

  def init(self, key):
    return self.rule.init(key)

  def targets(self, params, rollout, agent_out, hypers, **kwargs):
    return self.rule.targets(params, rollout, agent_out, hypers, **kwargs)

  def agent_loss(self, agent_out, targets, rollout, hypers):
    loss, metrics = self.rule.agent_loss(agent_out, targets, rollout, hypers)
    entropy = jnp.mean(entropy_from_logits(agent_out.logits[:-1]))
    return loss - self.coef * entropy, dict(metrics, entropy_bonus=self.coef * entropy)
