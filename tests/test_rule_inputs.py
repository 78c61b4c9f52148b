"""Rule-input options of ``LPGConfig`` (issue 16): sign-log and rollout-normalised rewards.

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
  config = LPGConfig(**SMALL, signlog_reward=True, normalise_reward=True)
  path = str(tmp_path / "rule.pkl")
  save_rule(path, LPGRule(config).init(jax.random.PRNGKey(0)), config)
  assert load_rule(path).config == config
