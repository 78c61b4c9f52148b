"""Rule-input options of ``LPGConfig`` (issue 16): sign-log and rollout-normalised rewards,
advantage and TD-error inputs from a value head of the agent.

Hand-computed transforms on a small rollout; options off leave the rule bit for bit as it
was (the committed ``artifacts/lpg_toy15.pkl`` gives the outputs pinned on main before the
options existed); configs saved without the options load with them off.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpg.artifact import load_rule
from lpg.rule import LPGConfig, LPGInputs, LPGRule, reward_input

REWARDS = np.array([[1.0, -2.0], [0.0, 3.0]], np.float32)          # [T=2, B=2]
SMALL = dict(hidden=8, y_dim=4, phi_hidden=4)

# toy15's pi_hat on the inputs of ``toy_inputs``: pinned with main's code (commit 20f08f2).
PINNED_PI_HAT = [
    [0.039420001208782196, -0.0067836022935807705, 0.22337497770786285],
    [-0.10477889329195023, -0.33930692076683044, 0.4142995774745941],
    [-0.08082633465528488, -0.07972367852926254, 0.5171757340431213],
    [-0.4543401300907135, -0.4354512691497803, -0.04388296231627464],
    [-0.07965289056301117, 0.3472690284252167, -0.2046460509300232],
    [0.24390749633312225, 0.10925113409757614, -0.41811829805374146]]
PINNED_Y_HAT_00 = [0.02606578916311264, 0.026511788368225098, 0.027899092063307762,
                   0.030703745782375336, 0.027170434594154358, 0.027001461014151573]


def toy_inputs(m, t=6, b=3):
  ks = jax.random.split(jax.random.PRNGKey(7), 4)
  y = jax.nn.softmax(jax.random.normal(ks[0], (t + 1, b, m)))
  return LPGInputs(reward=jnp.round(jax.random.normal(ks[1], (t, b)) * 2),
                   done=jnp.zeros((t, b)).at[3].set(1.0), gamma=jnp.full((t, b), 0.99),
                   pi_a=jax.random.uniform(ks[2], (t, b)), y=y[:-1], y_next=y[1:])


def test_signlog_by_hand():
  got = reward_input(jnp.asarray(REWARDS), LPGConfig(signlog_reward=True))
  want = [[np.log(2.0), -np.log(3.0)], [0.0, np.log(4.0)]]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_normalise_by_hand():
  got = reward_input(jnp.asarray(REWARDS), LPGConfig(normalise_reward=True))
  rms = np.sqrt((1 + 4 + 0 + 9) / 4 + 1e-8)                          # sqrt(3.5)
  np.testing.assert_allclose(got, REWARDS / rms, rtol=1e-6)
  np.testing.assert_allclose(np.mean(np.square(got)), 1.0, rtol=1e-6)


def test_signlog_then_normalise_by_hand():
  got = reward_input(jnp.asarray(REWARDS), LPGConfig(signlog_reward=True, normalise_reward=True))
  s = np.array([[np.log(2.0), -np.log(3.0)], [0.0, np.log(4.0)]])
  np.testing.assert_allclose(got, s / np.sqrt(np.mean(s * s) + 1e-8), rtol=1e-6)


def test_all_zero_rewards_stay_zero_and_finite():
  got = reward_input(jnp.zeros((3, 2)), LPGConfig(signlog_reward=True, normalise_reward=True))
  np.testing.assert_array_equal(got, 0.0)


def test_options_off_is_the_identity():
  r = jnp.asarray(REWARDS)
  assert reward_input(r, LPGConfig()) is r


def test_toy15_artifact_unchanged():
  """All options off: the committed rule loads and gives main's outputs exactly."""
  loaded = load_rule("artifacts/lpg_toy15.pkl")
  assert not loaded.config.signlog_reward and not loaded.config.normalise_reward
  out = jax.jit(loaded.rule.apply)(loaded.params, toy_inputs(loaded.config.y_dim))
  np.testing.assert_array_equal(out.pi_hat, np.float32(PINNED_PI_HAT))
  np.testing.assert_array_equal(out.y_hat[:, 0, 0], np.float32(PINNED_Y_HAT_00))


def test_old_config_dict_loads_with_options_off():
  old = dict(hidden=8, y_dim=4, phi_hidden=4, lifetime_inputs=False)
  config = LPGConfig(**old)
  assert config == LPGConfig(**SMALL)
  assert dataclasses.asdict(config)["signlog_reward"] is False


@pytest.mark.parametrize("option", ["signlog_reward", "normalise_reward"])
def test_option_feeds_the_transformed_reward(option):
  """Same parameters; the option's rule on r equals the plain rule on transform(r)."""
  plain, config = LPGRule(LPGConfig(**SMALL)), LPGConfig(**SMALL, **{option: True})
  rule = LPGRule(config)
  params = plain.init(jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      rule.init(jax.random.PRNGKey(0)))
  inputs = toy_inputs(SMALL["y_dim"])
  got = rule.apply(params, inputs)
  want = plain.apply(params, inputs._replace(reward=reward_input(inputs.reward, config)))
  np.testing.assert_array_equal(got.pi_hat, want.pi_hat)
  assert not np.allclose(got.pi_hat, plain.apply(params, inputs).pi_hat)


def test_options_are_recorded_in_the_artifact(tmp_path):
  from lpg.artifact import save_rule
  config = LPGConfig(**SMALL, signlog_reward=True, normalise_reward=True, value_inputs=True,
                     value_lambda=0.9, value_coef=0.25)
  path = str(tmp_path / "rule.pkl")
  save_rule(path, LPGRule(config).init(jax.random.PRNGKey(0)), config)
  assert load_rule(path).config == config


# ------------------------------------------------------------ value-head inputs
def _rollout(terminated_at_1: bool):
  from lpg.types import Rollout
  return Rollout(obs=jnp.zeros((3, 1), jnp.int32), actions=jnp.zeros((2, 1), jnp.int32),
                 rewards=jnp.array([[1.0], [2.0]]),
                 terminated=jnp.array([[False], [terminated_at_1]]),
                 truncated=jnp.zeros((2, 1), bool))


@pytest.mark.parametrize("terminated,want", [
    # gamma 0.5, lambda 1, v = (0.5, 1, 2): G1 = 2 + 0.5*2 = 3, G0 = 1 + 0.5*3 = 2.5;
    # TD0 = 1 + 0.5*1 - 0.5 = 1, TD1 = 2 + 0.5*2 - 1 = 2.
    (False, ([2.5, 3.0], [2.0, 2.0], [1.0, 2.0])),
    # Terminal at t=1: no bootstrap there: G1 = 2, G0 = 1 + 0.5*2 = 2; TD1 = 2 - 1 = 1.
    (True, ([2.0, 2.0], [1.5, 1.0], [1.0, 1.0]))])
def test_value_targets_by_hand(terminated, want):
  from lpg.rule import value_targets
  v = jnp.array([[0.5], [1.0], [2.0]])
  got = value_targets(_rollout(terminated), v, 0.5, 1.0)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g[:, 0], w, rtol=1e-6)


def test_value_inputs_are_normalised_advantages_and_td_errors():
  from lpg.rule import lpg_inputs
  from lpg.types import AgentOutputs
  out = AgentOutputs(logits=jnp.zeros((3, 1, 2)),
                     heads={"y": jnp.zeros((3, 1, 4)), "v": jnp.array([[0.5], [1.0], [2.0]])})
  inputs = lpg_inputs(_rollout(True), out, 0.5, value_lambda=1.0)
  adv, td = np.array([1.5, 1.0]), np.array([1.0, 1.0])
  np.testing.assert_allclose(inputs.advantage[:, 0], adv / np.sqrt(np.mean(adv**2) + 1e-8),
                             rtol=1e-6)
  np.testing.assert_allclose(inputs.td_error[:, 0], td / np.sqrt(np.mean(td**2) + 1e-8), rtol=1e-6)
  assert lpg_inputs(_rollout(True), out, 0.5).advantage is None


def test_value_rule_trains_its_value_head():
  """The rule asks for a scalar ``v`` head; repeated inner updates on one rollout fit it."""
  from envs.chain import ChainConfig, DelayedChain
  from lpg.meta_objective import MetaConfig, MetaProblem
  from lpg.networks import AgentConfig
  from lpg.rule import make_hypers
  from lpg.update import OptimizerConfig, inner_update
  rule = LPGRule(LPGConfig(**SMALL, value_inputs=True))
  assert rule.head_sizes() == {"y": 4, "v": 0}
  problem = MetaProblem(DelayedChain(ChainConfig(3, 4), name="tiny-chain"), rule,
                        AgentConfig("tabular"), OptimizerConfig("sgd"),
                        MetaConfig(num_inner=1, rollout_len=8, num_envs=4))
  life = problem.init_lifetime(jax.random.PRNGKey(0), make_hypers(1.0))
  rollout, _, _ = problem.rollout(life.agent_params, life.env_params, life.env,
                                  jax.random.PRNGKey(1))
  rule_params = rule.init(jax.random.PRNGKey(2))

  @jax.jit
  def step(params, opt_state):
    res = inner_update(rule, rule_params, problem.net, problem.optimizer, params, opt_state,
                       rollout, life.hypers)
    return res.params, res.opt_state, res.metrics["value_loss"]

  params, opt_state, losses = life.agent_params, life.opt_state, []
  for _ in range(10):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] > 0 and losses[-1] < 0.5 * losses[0], losses
