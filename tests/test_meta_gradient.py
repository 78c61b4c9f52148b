"""The meta-gradient through K inner updates against central finite differences (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.chain import ChainConfig, DelayedChain
from lpg.meta_objective import MetaConfig, MetaProblem, population_meta_grad
from lpg.networks import AgentConfig
from lpg.rule import LPGConfig, LPGRule, make_hypers
from lpg.update import OptimizerConfig


def _to64(tree):
  return jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _tiny_problem64(num_inner, opt, lr, remat=False, rule_config=None):
  """A float64 tiny-chain problem, its rule parameters and a lifetime with a non-zero agent."""
  env = DelayedChain(ChainConfig(3, 4), name="tiny-chain")
  rule = LPGRule(rule_config or LPGConfig(hidden=3, y_dim=3, phi_hidden=2))
  problem = MetaProblem(env, rule, AgentConfig("tabular"), OptimizerConfig(opt, max_grad_norm=0.0),
                        MetaConfig(num_inner=num_inner, rollout_len=6, num_envs=3, critic_lr=0.1,
                                   remat_inner=remat))
  rule_params = _to64(rule.init(jax.random.PRNGKey(0)))
  # Non-zero agent start so every path carries signal.
  life = problem.init_lifetime(jax.random.PRNGKey(1), make_hypers(lr, alpha_y=0.5, gamma=0.9))
  life = life._replace(**{f: _to64(getattr(life, f)) for f in (
      "agent_params", "opt_state", "critic_params", "critic_opt_state", "hypers")})
  life = life._replace(agent_params=jax.tree_util.tree_map(
      lambda x: 0.3 * jax.random.normal(jax.random.PRNGKey(5), x.shape, x.dtype),
      life.agent_params))
  return problem, rule_params, life


@pytest.mark.parametrize("opt", ["adam"])
def test_k20_rematerialised_meta_gradient_equals_stored(opt):
  """K=20 inner updates: ``remat_inner`` recomputes, it does not change the meta-gradient."""
  with jax.enable_x64(True):
    key = jax.random.PRNGKey(2)
    grads = []
    for remat in (False, True):
      problem, rule_params, life = _tiny_problem64(20, opt, 0.1, remat)
      g = jax.jit(jax.grad(lambda rp: problem.meta_loss(rp, life, key)[0]))(rule_params)
      grads.append(jax.flatten_util.ravel_pytree(g)[0])
    assert bool(jnp.all(jnp.isfinite(grads[0]))) and float(jnp.abs(grads[0]).max()) > 0
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-10, atol=1e-14)


NORMALISED_INPUTS = LPGConfig(hidden=3, y_dim=3, phi_hidden=2, signlog_reward=True,
                              normalise_reward=True)
VALUE_INPUTS = LPGConfig(hidden=3, y_dim=3, phi_hidden=2, value_inputs=True)


@pytest.mark.parametrize("num_inner,opt,lr,rule_config", [
    (1, "sgd", 2.0, None), (3, "sgd", 2.0, None), (1, "adam", 0.1, None), (3, "adam", 0.1, None),
    (3, "sgd", 2.0, NORMALISED_INPUTS), (3, "adam", 0.1, VALUE_INPUTS)])
def test_meta_gradient_matches_finite_differences(num_inner, opt, lr, rule_config):
  with jax.enable_x64(True):
    problem, rule_params, life = _tiny_problem64(num_inner, opt, lr, rule_config=rule_config)
    key = jax.random.PRNGKey(2)
    # One compiled program (value and gradient) serves both sides of the check.
    value_and_grad = jax.jit(jax.value_and_grad(lambda rp: problem.meta_loss(rp, life, key)[0]))
    loss_fn = lambda rp: value_and_grad(rp)[0]   # noqa: E731
    _, grads = value_and_grad(rule_params)

    flat, unravel = jax.flatten_util.ravel_pytree(rule_params)
    gflat, _ = jax.flatten_util.ravel_pytree(grads)
    assert gflat.dtype == jnp.float64
    eps = 1e-6
    rng = np.random.default_rng(0)
    # Directional derivatives along random directions, plus the largest coordinates.
    directions = [rng.standard_normal(flat.shape) for _ in range(3)]
    for i in np.argsort(-np.abs(np.asarray(gflat)))[:4]:
      e = np.zeros(flat.shape)
      e[i] = 1.0
      directions.append(e)
    for d in directions:
      d = jnp.asarray(d / np.linalg.norm(d))
      fd = (loss_fn(unravel(flat + eps * d)) - loss_fn(unravel(flat - eps * d))) / (2 * eps)
      ad = jnp.dot(gflat, d)
      assert abs(float(fd) - float(ad)) <= 1e-6 + 1e-4 * abs(float(ad)), (float(fd), float(ad))


def test_meta_gradient_reaches_every_rule_parameter_and_chunks_equal_one_batch():
  """Every leaf of the rule gets a non-zero meta-gradient (no silent zero gradient), and
  ``population_meta_grad(chunk=2)`` over the 4 lifetimes equals the whole batch at once
  (one test: the two share the compiled full-batch gradient)."""
  env = DelayedChain(ChainConfig(3, 6), name="tiny-chain")
  rule = LPGRule(LPGConfig(hidden=8, y_dim=4, phi_hidden=4))
  problem = MetaProblem(env, rule, AgentConfig("tabular"), OptimizerConfig("sgd"),
                        MetaConfig(num_inner=2, rollout_len=8, num_envs=8))
  lives = jax.vmap(problem.init_lifetime, in_axes=(0, None, None))(
      jax.random.split(jax.random.PRNGKey(0), 4), make_hypers(10.0), 6)
  assert lives.horizon.shape == (4,) and float(lives.progress[0]) == 0.0
  rule_params = rule.init(jax.random.PRNGKey(1))
  keys = jax.random.split(jax.random.PRNGKey(2), 4)
  full = jax.jit(lambda rp, l, k: population_meta_grad(problem, rp, l, k))(rule_params, lives, keys)
  loss, grads, new_lives, metrics = full
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).max()) > 0.0, f"zero meta-gradient at {jax.tree_util.keystr(path)}"
  np.testing.assert_array_equal(new_lives.age, 2)
  assert metrics.meta_loss.shape == (4,)
  chunked = jax.jit(lambda rp, l, k: population_meta_grad(problem, rp, l, k, chunk=2))(
      rule_params, lives, keys)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(chunked)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(chunked[2].progress, 2 / 6, rtol=1e-6)  # n/N after K=2 of 6
  with pytest.raises(ValueError, match="must divide"):
    population_meta_grad(problem, rule_params, lives, keys, chunk=3)


def test_meta_gradient_is_finite_through_adam_with_zero_gradient_entries():
  """Image pixels that are always empty give exactly-zero agent gradients; the
  meta-gradient through Adam must stay finite there (Adam's eps_root)."""
  import envs
  env = envs.make("random/small")
  rule = LPGRule(LPGConfig(hidden=8, y_dim=4, phi_hidden=4))
  problem = MetaProblem(env, rule, AgentConfig("mlp", hidden=(16,)), OptimizerConfig("adam"),
                        MetaConfig(num_inner=2, rollout_len=4, num_envs=4))
  lives = jax.vmap(problem.init_lifetime, in_axes=(0, None))(
      jax.random.split(jax.random.PRNGKey(0), 2), make_hypers(1e-3))
  loss, grads, _, _ = jax.jit(lambda rp, l, k: population_meta_grad(problem, rp, l, k))(
      rule.init(jax.random.PRNGKey(1)), lives, jax.random.split(jax.random.PRNGKey(2), 2))
  flat, _ = jax.flatten_util.ravel_pytree(grads)
  assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(flat)))
  assert float(jnp.abs(flat).max()) > 0
