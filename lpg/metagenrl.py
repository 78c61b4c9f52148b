"""MetaGenRL's learned objective for discrete actions, behind the ``UpdateRule`` interface.

MetaGenRL (Kirsch, van Steenkiste, Schmidhuber, ICLR 2020) learns an objective
function that the agent *descends*; it is meta-trained by asking a critic how
good the policy is after one step on it (``meta_train/metagenrl.py``).  Here the
objective is a reverse-time LSTM over a trajectory, like LPG's rule
(``lpg/rule.py``): its output at step t depends on steps t..end of t's episode
only.  Per-step inputs (never observations or actions, so it transfers across
tasks and action counts), all ``[T, B]``:

``[r_t, d_t, discount_t, V(s_t), V(s_{t+1}), delta_t, log pi(a_t|s_t), H(pi(.|s_t))
(, lifetime progress)]``

with ``discount_t = gamma * (1 - d_t)`` and the derived one-step TD error
``delta_t = r_t + discount_t V(s_{t+1}) - V(s_t)`` (a function of the value
inputs, given explicitly so that a linear read-out can express an actor-critic
advantage exactly).  The per-step output ``o_t`` (LSTM output and inputs through
one linear layer) weights the log-probability; the agent descends

``L(theta) = -mean_t o_t log pi_theta(a_t|s_t) + value_coef * mean_t (V_theta(s_t) - G^lambda_t)^2``

where the value head ``v`` is the agent's own, trained by TD(lambda) (the
objective's value inputs).  ``o_t`` is computed outside the differentiated loss
(``lpg.update.inner_update``), so the inner step treats it as a constant while
the meta-gradient sees how it depends on the objective's parameters.
"""
from __future__ import annotations

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp

from lpg.returns import batched_lambda_returns
from lpg.rule import (InnerHypers, LifetimeProgress, UpdateRule, entropy_from_logits,
                      log_prob)
from lpg.types import AgentOutputs, PyTree, Rollout, RuleOutputs

FAMILY = "metagenrl"
FEATURES = ("reward", "done", "discount", "v", "v_next", "delta", "log_pi", "entropy")


@dataclasses.dataclass(frozen=True)
class MetaGenRLConfig:
  """Sizes of the objective network and the agent's value loss.

  Attributes:
    hidden: LSTM width [public code of the paper: ``obj_func_lstm_units`` 32].
    td_lambda: lambda of the TD(lambda) targets of the agent's value head
      [chosen: 0.95, as the project's GAE; the paper's code uses a GAE factor
      of 0.97].
    value_coef: weight of the value loss in the agent's loss [chosen: 0.5, as A2C].
    use_progress: feed the lifetime progress (in [0, 1]) as a ninth input; the
      caller must then pass ``progress`` to ``targets`` [chosen: off].
  """
  hidden: int = 32
  td_lambda: float = 0.95
  value_coef: float = 0.5
  use_progress: bool = False

  def __post_init__(self):
    if int(self.hidden) < 1:
      raise ValueError(f"MetaGenRLConfig.hidden must be >= 1, got {self.hidden}")
    if not 0.0 <= self.td_lambda <= 1.0:
      raise ValueError(f"MetaGenRLConfig.td_lambda must lie in [0, 1], got {self.td_lambda}")
    if self.value_coef < 0:
      raise ValueError(f"MetaGenRLConfig.value_coef must be >= 0, got {self.value_coef}")

  @property
  def num_features(self) -> int:
    return len(FEATURES) + int(self.use_progress)

  def to_dict(self) -> dict:
    """What an artifact stores to rebuild the rule (with ``family = FAMILY``)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MetaGenRLConfig":
    """Inverse of ``to_dict``; unknown keys are refused (ValueError)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown MetaGenRL config field(s) {unknown}; known: {sorted(known)}")
    return cls(**d)


def objective_features(rollout: Rollout, agent_out: AgentOutputs, gamma,
                       progress=None) -> jax.Array:
  """The objective's per-step inputs ``[T, B, F]`` (order of ``FEATURES``, then progress).

  Args:
    rollout: ``[T(+1), B]`` trajectories.
    agent_out: the agent's outputs on ``rollout.obs`` (``[T+1, B, ...]``), with a
      scalar ``v`` head.
    gamma: the discount.
    progress: ``None`` or lifetime progress broadcastable to ``[T, B]``.
  """
  logits = agent_out.logits[:-1]
  v_all = agent_out.heads["v"]                                           # [T+1, B]
  done = rollout.done
  discount = jnp.asarray(gamma, v_all.dtype) * rollout.bootstrap_mask
  v, v_next = v_all[:-1], v_all[1:]
  delta = rollout.rewards + discount * v_next - v
  cols = [rollout.rewards, done, discount, v, v_next, delta,
          log_prob(logits, rollout.actions), entropy_from_logits(logits)]
  if progress is not None:
    cols.append(jnp.broadcast_to(jnp.asarray(progress, v.dtype), done.shape))
  return jnp.stack([c.astype(v.dtype) for c in cols], axis=-1)


def _objective_network(config: MetaGenRLConfig):
  def forward(features: jax.Array, done: jax.Array) -> jax.Array:
    core = hk.ResetCore(hk.LSTM(config.hidden, name="lstm"))
    # Backwards in time, the state from t+1 dropped where the episode ended at t
    # (as LPG's rule): the output at t sees only t..end of t's episode.
    outs, _ = hk.dynamic_unroll(core, (features, done > 0.5),
                                core.initial_state(features.shape[1]),
                                time_major=True, reverse=True)
    head = hk.Linear(1, name="out")
    return head(jnp.concatenate([outs, features], axis=-1))[..., 0]
  return hk.without_apply_rng(hk.transform(forward))


class MetaGenRLRule(UpdateRule):
  """The learned objective: ``o_t`` from a reverse LSTM, descended as ``-o_t log pi``.

  Targets: ``pi_hat`` = ``o_t`` ``[T, B]``; ``extras["returns"]`` = TD(lambda)
  returns ``[T, B]`` of the agent's value head (from stop-gradient values).
  """

  name = FAMILY

  def __init__(self, config: MetaGenRLConfig = MetaGenRLConfig()):
    self.config = config
    # ``lpg.update.inner_update`` then passes ``LifetimeProgress`` (lpg-apply, validation).
    self.needs_progress = bool(config.use_progress)
    self._net = _objective_network(config)

  def head_sizes(self) -> dict[str, int]:
    return {"v": 0}

  def init(self, key: jax.Array) -> PyTree:
    z = jnp.zeros((2, 1))
    return self._net.init(key, jnp.zeros((2, 1, self.config.num_features)), z)

  def apply(self, params: PyTree, features: jax.Array, done: jax.Array) -> jax.Array:
    """``features`` ``[T, B, F]``, ``done`` ``[T, B]`` -> objective weights ``o`` ``[T, B]``."""
    return self._net.apply(params, features, done)

  def targets(self, params: PyTree, rollout: Rollout, agent_out: AgentOutputs,
              hypers: InnerHypers, progress=None) -> RuleOutputs:
    """See the class docstring; ``progress`` (a fraction in [0, 1] or a
    ``LifetimeProgress`` n of N) is used only with ``use_progress``."""
    if self.config.use_progress and progress is None:
      raise ValueError("this MetaGenRL objective takes the lifetime progress; pass progress=")
    if isinstance(progress, LifetimeProgress):
      progress = progress.done / jnp.maximum(progress.planned, 1.0)
    feats = objective_features(rollout, agent_out, hypers.gamma,
                               progress if self.config.use_progress else None)
    o = self.apply(params, feats, rollout.done)
    v = jax.lax.stop_gradient(agent_out.heads["v"])
    discount = hypers.gamma * rollout.bootstrap_mask
    returns = batched_lambda_returns(rollout.rewards, discount, v, self.config.td_lambda)
    return RuleOutputs(pi_hat=o, y_hat=None, extras={"returns": jax.lax.stop_gradient(returns)})

  def agent_loss(self, agent_out: AgentOutputs, targets: RuleOutputs, rollout: Rollout,
                 hypers: InnerHypers) -> tuple[jax.Array, dict]:
    del hypers
    pg = jnp.mean(targets.pi_hat * log_prob(agent_out.logits[:-1], rollout.actions))
    v_loss = jnp.mean(jnp.square(agent_out.heads["v"][:-1] - targets.extras["returns"]))
    return -pg + self.config.value_coef * v_loss, {"pg": pg, "value_loss": v_loss}


class WithProgress(UpdateRule):
  """``rule`` with the lifetime progress bound, for callers whose inner update
  does not pass one (``lpg.update.inner_update`` calls ``targets`` with four
  arguments).  Build it inside the traced function: ``progress`` may be traced."""

  def __init__(self, rule: MetaGenRLRule, progress):
    self.rule, self.progress, self.name = rule, progress, rule.name

  def head_sizes(self):
    return self.rule.head_sizes()

  def init(self, key):
    return self.rule.init(key)

  def targets(self, params, rollout, agent_out, hypers, progress=None):
    return self.rule.targets(params, rollout, agent_out, hypers,
                             self.progress if progress is None else progress)

  def agent_loss(self, agent_out, targets, rollout, hypers):
    return self.rule.agent_loss(agent_out, targets, rollout, hypers)


def actor_critic_params(rule: MetaGenRLRule, key: jax.Array | None = None) -> PyTree:
  """Hand-set objective parameters whose output is the one-step advantage ``delta_t``.

  Every weight from the LSTM to the output is zero and the output reads only the
  ``delta`` input, so descending the objective is an actor-critic update with
  TD(0) advantages (tests check it against an independent computation).
  """
  params = rule.init(jax.random.PRNGKey(0) if key is None else key)
  out = params["out"]
  w = jnp.zeros_like(out["w"]).at[rule.config.hidden + FEATURES.index("delta"), 0].set(1.0)
  return {**params, "out": {"w": w, "b": jnp.zeros_like(out["b"])}}
