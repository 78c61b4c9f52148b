"""Lifetime-aware rules (n/N, log N) and the forward-only lifetime of lpg.lifetime."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from lpg.lifetime import LifetimeConfig, LifetimeTrace, fitness, make_lifetime, mean_returns
from lpg.networks import AgentConfig, make_agent_network
from lpg.rollout import reset_envs, unroll
from lpg.rule import LPGConfig, LPGRule, lpg_inputs, make_hypers, make_progress
from lpg.types import RuleOutputs
from lpg.update import OptimizerConfig, inner_update, make_optimizer

SMALL = dict(hidden=8, y_dim=4, phi_hidden=4)


@pytest.fixture(scope="module")
def setup():
  """One rollout of a tabular agent on chain/short (as tests/test_lpg_update.py)."""
  env = envs.make("chain/short")
  net = make_agent_network(AgentConfig("tabular"), env.obs_spec, env.num_actions, {"y": 4})
  params = net.init(jax.random.PRNGKey(0))
  ep = env.default_params()
  carry = reset_envs(env, ep, jax.random.PRNGKey(1), 4)
  rollout, _, _ = unroll(env, ep, lambda o: net.apply(params, o).logits, carry,
                         jax.random.PRNGKey(2), 10)
  opt = make_optimizer(OptimizerConfig("sgd"))
  return env, net, params, rollout, opt


def _update(rule, rule_params, setup, **kw):
  _, net, params, rollout, opt = setup
  return inner_update(rule, rule_params, net, opt, params, opt.init(params), rollout,
                      make_hypers(40.0), **kw)


def test_rule_without_option_is_unchanged(setup):
  """Same parameters and outputs as before the option existed (values from main, c5bf002)."""
  rule = LPGRule(LPGConfig(**SMALL))
  assert not rule.needs_progress
  rp = rule.init(jax.random.PRNGKey(3))
  assert rp["lstm/linear"]["w"].shape == (6 + 8, 32)
  res = _update(rule, rp, setup)
  np.testing.assert_allclose(float(jnp.sum(res.targets.pi_hat)), 10.771712303161621, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(res.targets.y_hat[..., 0])), 12.211529731750488,
                             rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(res.params["~"]["pi"] ** 2)), 1.170391321182251,
                             rtol=1e-6)
  # A progress given to a rule that does not use it is ignored, bit for bit.
  again = _update(rule, rp, setup, progress=make_progress(3, 10))
  for a, b in zip(jax.tree_util.tree_leaves(res), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_lifetime_aware_rule_sees_progress(setup):
  rule = LPGRule(LPGConfig(lifetime_inputs=True, **SMALL))
  assert rule.needs_progress
  rp = rule.init(jax.random.PRNGKey(3))
  assert rp["lstm/linear"]["w"].shape == (8 + 8, 32)
  early = _update(rule, rp, setup, progress=make_progress(0, 100))
  late = _update(rule, rp, setup, progress=make_progress(99, 100))
  longer = _update(rule, rp, setup, progress=make_progress(0, 1000))
  assert float(jnp.max(jnp.abs(early.targets.pi_hat - late.targets.pi_hat))) > 1e-6
  assert float(jnp.max(jnp.abs(early.targets.pi_hat - longer.targets.pi_hat))) > 1e-6
  with pytest.raises(ValueError, match="lifetime-aware"):
    _update(rule, rp, setup)


def test_inputs_n_over_n_and_log_n(setup):
  _, net, params, rollout, _ = setup
  inputs = lpg_inputs(rollout, net.apply(params, rollout.obs), 0.99, make_progress(25, 100))
  np.testing.assert_allclose(inputs.progress, np.full((10, 4), 0.25))
  np.testing.assert_allclose(inputs.log_planned, np.full((10, 4), np.log(100.0)), rtol=1e-6)
  assert lpg_inputs(rollout, net.apply(params, rollout.obs), 0.99).progress is None


class ProgressEcho(LPGRule):
  """Lifetime-aware rule whose pi_hat is the n/N it was given (0 gradient scale aside)."""

  def targets(self, params, rollout, agent_out, hypers, progress=None):
    inputs = lpg_inputs(rollout, agent_out, hypers.gamma, progress)
    m = self.config.y_dim
    return RuleOutputs(pi_hat=inputs.progress, y_hat=jnp.full(inputs.y.shape, 1.0 / m))


@pytest.fixture(scope="module")
def echo_lifetime():
  env = envs.make("chain/short")
  rule = ProgressEcho(LPGConfig(lifetime_inputs=True, **SMALL))
  cfg = LifetimeConfig(num_updates=8, rollout_len=5, num_envs=4)
  life = make_lifetime(env, rule, AgentConfig("tabular"), OptimizerConfig("sgd"), cfg)
  return jax.jit(life), rule.init(jax.random.PRNGKey(0))


def test_rule_receives_progress_rising_over_lifetime(echo_lifetime):
  life, rp = echo_lifetime
  trace = life(rp, make_hypers(40.0), jax.random.PRNGKey(1), 8)
  seen = np.asarray(trace.pi_hat_rms)     # rms of a constant pi_hat = the n/N the rule saw
  np.testing.assert_allclose(seen, np.arange(8) / 8, atol=1e-6)
  assert seen[0] == 0.0 and np.all(np.diff(seen) > 0) and seen[-1] == pytest.approx(7 / 8)
  np.testing.assert_array_equal(trace.active, np.ones(8))
  # A shorter planned lifetime: n/N over its own length, later updates skipped.
  short = life(rp, make_hypers(40.0), jax.random.PRNGKey(1), 4)
  np.testing.assert_allclose(short.pi_hat_rms[:4], np.arange(4) / 4, atol=1e-6)
  np.testing.assert_array_equal(short.active, [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(short.episodes[4:], 0.0)


def test_lifetime_vmaps_over_members_and_seeds(echo_lifetime):
  life, rp = echo_lifetime
  members = jax.tree_util.tree_map(lambda x: jnp.stack([x, x + 0.1]), rp)
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  h = make_hypers(40.0)
  out = jax.vmap(jax.vmap(life, (None, None, 0, None)), (0, None, None, None))(members, h, keys, 8)
  assert out.return_sum.shape == (2, 3, 8)
  one = life(rp, h, keys[1], 8)
  np.testing.assert_allclose(out.return_sum[0, 1], one.return_sum, rtol=1e-6)


def test_fitness_window_and_normalisation():
  trace = LifetimeTrace(return_sum=jnp.array([0.0, 2.0, 6.0, 9.0]),
                        episodes=jnp.array([0.0, 1.0, 2.0, 3.0]),
                        progress=jnp.array([0.0, 0.25, 0.5, 0.75]),
                        active=jnp.ones(4), entropy=jnp.zeros(4), pi_hat_rms=jnp.zeros(4))
  assert float(fitness(trace)) == pytest.approx(17.0 / 6.0)
  assert float(fitness(trace, window=0.5)) == pytest.approx(15.0 / 5.0)
  assert float(fitness(trace, window=0.5, reference=(5.0, 1.0))) == pytest.approx(0.5)
  np.testing.assert_allclose(mean_returns(trace), [np.nan, 2.0, 3.0, 3.0])
  with pytest.raises(ValueError):
    fitness(trace, window=0.0)


def test_fitness_entropy_bonus_over_the_window_scaled_by_log_actions():
  trace = LifetimeTrace(return_sum=jnp.array([0.0, 2.0, 6.0, 9.0]),
                        episodes=jnp.array([0.0, 1.0, 2.0, 3.0]),
                        progress=jnp.array([0.0, 0.25, 0.5, 0.75]),
                        active=jnp.array([1.0, 1.0, 1.0, 0.0]),     # the last update skipped
                        entropy=jnp.array([1.2, 0.9, 0.3, 5.0]), pi_hat_rms=jnp.zeros(4))
  base = float(fitness(trace, reference=(5.0, 1.0)))                 # (8/3 - 1) / 4
  assert base == pytest.approx((8.0 / 3.0 - 1.0) / 4.0)
  bonus = float(fitness(trace, reference=(5.0, 1.0), entropy_coef=0.1, max_entropy=np.log(3)))
  assert bonus == pytest.approx(base + 0.1 * (2.4 / 3) / np.log(3))
  # Window 0.5: the updates at n/N >= 0.5 that ran: the third only.
  late = float(fitness(trace, window=0.5, entropy_coef=0.1, max_entropy=2.0))
  assert late == pytest.approx(3.0 + 0.1 * 0.3 / 2.0)


def test_sample_planned_is_log_uniform_in_range():
  from lpg.lifetime import sample_planned
  n = np.asarray(jax.vmap(lambda k: sample_planned(k, 10, 250))(
      jax.random.split(jax.random.PRNGKey(0), 4000)))
  assert n.min() >= 10 and n.max() <= 250 and n.dtype == np.int32
  assert abs(np.median(n) - np.sqrt(10 * 250)) < 8      # log-uniform: median ~ 50
  with pytest.raises(ValueError):
    sample_planned(jax.random.PRNGKey(0), 0, 5)
