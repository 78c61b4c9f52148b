"""The LPG rule network: shapes, reverse-time semantics with episode resets, jit/vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpg.rule import LPGConfig, LPGInputs, LPGRule

T, B, M = 8, 2, 5


@pytest.fixture(scope="module")
def rule_and_params():
  rule = LPGRule(LPGConfig(hidden=16, y_dim=M, phi_hidden=4))
  return rule, rule.init(jax.random.PRNGKey(0))


def random_inputs(key, done_at=(4,)):
  ks = jax.random.split(key, 4)
  done = jnp.zeros((T, B)).at[jnp.array(done_at)].set(1.0)
  y = jax.nn.softmax(jax.random.normal(ks[0], (T + 1, B, M)))
  return LPGInputs(reward=jax.random.normal(ks[1], (T, B)), done=done,
                   gamma=jnp.full((T, B), 0.99),
                   pi_a=jax.random.uniform(ks[2], (T, B)), y=y[:-1], y_next=y[1:])


def perturb(inputs, t):
  return inputs._replace(reward=inputs.reward.at[t].add(3.0), pi_a=inputs.pi_a.at[t].set(0.01))


def test_shapes(rule_and_params):
  rule, params = rule_and_params
  out = rule.apply(params, random_inputs(jax.random.PRNGKey(1)))
  assert out.pi_hat.shape == (T, B)
  assert out.y_hat.shape == (T, B, M)
  np.testing.assert_allclose(out.y_hat.sum(-1), 1.0, rtol=1e-5)


def test_reverse_semantics_with_episode_reset(rule_and_params):
  """Output at t=2 sees steps 2..4 (its episode ends at 4), nothing else."""
  rule, params = rule_and_params
  apply = jax.jit(rule.apply)
  base_inputs = random_inputs(jax.random.PRNGKey(2), done_at=(4,))
  base = apply(params, base_inputs)
  t = 2
  for earlier in (0, 1):     # steps before t: no effect on t
    out = apply(params, perturb(base_inputs, earlier))
    np.testing.assert_array_equal(out.pi_hat[t], base.pi_hat[t])
    np.testing.assert_array_equal(out.y_hat[t], base.y_hat[t])
  for later_episode in (5, 6, 7):   # after t's episode ended: no effect on t
    out = apply(params, perturb(base_inputs, later_episode))
    np.testing.assert_array_equal(out.pi_hat[t], base.pi_hat[t])
  for same_episode in (3, 4):   # later steps of the same episode: they matter
    out = apply(params, perturb(base_inputs, same_episode))
    assert np.all(np.abs(out.pi_hat[t] - base.pi_hat[t]) > 1e-7)
  # And the step after the boundary does see the next episode's steps.
  out = apply(params, perturb(base_inputs, 7))
  assert np.all(np.abs(out.pi_hat[5] - base.pi_hat[5]) > 1e-7)


def test_jit_matches_no_jit_and_vmap(rule_and_params):
  rule, params = rule_and_params
  inputs = random_inputs(jax.random.PRNGKey(3))
  a = rule.apply(params, inputs)
  b = jax.jit(rule.apply)(params, inputs)
  np.testing.assert_allclose(a.pi_hat, b.pi_hat, rtol=1e-5, atol=1e-6)
  # vmap over a leading batch of rollouts equals applying each one.
  stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x * 0.5]), inputs)
  v = jax.vmap(rule.apply, in_axes=(None, 0))(params, stacked)
  np.testing.assert_allclose(v.pi_hat[0], a.pi_hat, rtol=1e-5, atol=1e-6)


def test_rule_never_sees_observations():
  """The rule's inputs carry no observation or action fields."""
  assert set(LPGInputs._fields) == {"reward", "done", "gamma", "pi_a", "y", "y_next",
                                    "progress", "log_planned", "advantage", "td_error"}


def test_entropy_bonus_subtracts_coef_times_mean_entropy(rule_and_params):
  """``EntropyBonus``: the rule's own targets, its loss minus coef x the mean policy entropy
  over the rollout's T steps (hand-computed), and its gradient moves towards uniform."""
  from lpg.rule import EntropyBonus, make_hypers
  from lpg.types import AgentOutputs, Rollout
  rule, params = rule_and_params
  ks = jax.random.split(jax.random.PRNGKey(3), 4)
  rollout = Rollout(obs=jnp.zeros((T + 1, B), jnp.int32),
                    actions=jax.random.randint(ks[0], (T, B), 0, 3),
                    rewards=jax.random.normal(ks[1], (T, B)),
                    terminated=jnp.zeros((T, B), bool), truncated=jnp.zeros((T, B), bool))
  out = AgentOutputs(logits=jax.random.normal(ks[2], (T + 1, B, 3)),
                     heads={"y": jax.random.normal(ks[3], (T + 1, B, M))})
  hypers = make_hypers(1.0)
  wrapped = EntropyBonus(rule, 0.1)
  assert wrapped.head_sizes() == rule.head_sizes() and not wrapped.needs_progress
  targets = rule.targets(params, rollout, out, hypers)
  np.testing.assert_array_equal(wrapped.targets(params, rollout, out, hypers).pi_hat,
                                targets.pi_hat)
  base, _ = rule.agent_loss(out, targets, rollout, hypers)
  loss, metrics = wrapped.agent_loss(out, targets, rollout, hypers)
  p = np.asarray(jax.nn.softmax(out.logits[:-1]))
  entropy = float(np.mean(-np.sum(p * np.log(p), -1)))
  np.testing.assert_allclose(loss, base - 0.1 * entropy, rtol=1e-5)
  np.testing.assert_allclose(metrics["entropy_bonus"], 0.1 * entropy, rtol=1e-5)
  # Only the bonus: its descent direction raises the entropy of a peaked policy.
  peaked = AgentOutputs(logits=jnp.zeros((T + 1, B, 3)).at[..., 0].set(3.0), heads=out.heads)
  bonus = lambda logits: (EntropyBonus(rule, 1.0).agent_loss(peaked._replace(logits=logits),
                                                             targets, rollout, hypers)[0]
                          - rule.agent_loss(peaked._replace(logits=logits), targets, rollout,
                                            hypers)[0])
  g = jax.grad(bonus)(peaked.logits)
  assert float(g[:-1, :, 0].mean()) > 0 > float(g[:-1, :, 1].mean())   # descent lowers the peak
  with pytest.raises(ValueError, match=">= 0"):
    EntropyBonus(rule, -1.0)
