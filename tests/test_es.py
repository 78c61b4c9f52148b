"""OpenES (meta_train.es): noise, shaping, the estimate, resume, and sharding over devices."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import es

D = 10
A = jnp.linspace(0.5, 2.0, D)           # curvature of the quadratic
C = jnp.linspace(-1.0, 1.0, D)          # its optimum


def quadratic(x):
  return -0.5 * jnp.sum(A * jnp.square(x - C))


def test_config_validation():
  with pytest.raises(ValueError, match="even"):
    es.ESConfig(population=7)
  with pytest.raises(ValueError):
    es.ESConfig(sigma=0.0)
  with pytest.raises(ValueError):
    es.ESConfig(shaping="best")
  cfg = es.ESConfig()
  assert (cfg.sigma, cfg.learning_rate) == (0.1, 1e-2)   # corrected TA-LPG settings


def test_antithetic_pairs_share_noise_with_opposite_signs():
  eps = es.sample_noise(jax.random.PRNGKey(0), 8, D)
  assert eps.shape == (8, D)
  np.testing.assert_array_equal(eps[0::2], -eps[1::2])
  assert float(jnp.min(jnp.abs(eps[0] - eps[2]))) > 0    # pairs differ from each other
  keys = es.member_keys(jax.random.PRNGKey(1), es.ESConfig(population=8, shared_eval_key=False))
  np.testing.assert_array_equal(keys[0::2], keys[1::2])
  assert not np.array_equal(keys[0], keys[2])


def test_centered_ranks():
  np.testing.assert_allclose(es.centered_ranks(jnp.array([3.0, -1.0, 2.0])), [0.5, -0.5, 0.0])
  z = es.shape_fitness(jnp.array([1.0, 2.0, 3.0, 4.0]), "z_score")
  assert float(z.mean()) == pytest.approx(0.0, abs=1e-6)


def test_estimate_matches_analytic_gradient_in_expectation():
  """Raw fitness: E[g] = grad f(mean) exactly for a quadratic (antithetic pairs)."""
  mean = jnp.zeros(D)
  sigma, pop, reps = 0.1, 64, 400

  def one(key):
    eps = es.sample_noise(key, pop, D)
    fit = jax.vmap(quadratic)(mean + sigma * eps)
    return es.gradient_estimate(eps, fit, sigma)

  est = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(0), reps)).mean(0)
  true = jax.grad(quadratic)(mean)
  err = float(jnp.linalg.norm(est - true) / jnp.linalg.norm(true))
  assert err < 0.05, err
  # Centred ranks: one generation's estimate points the right way.
  eps = es.sample_noise(jax.random.PRNGKey(5), pop, D)
  ranked = es.gradient_estimate(eps, es.centered_ranks(jax.vmap(quadratic)(mean + sigma * eps)),
                                sigma)
  cos = float(ranked @ true / (jnp.linalg.norm(ranked) * jnp.linalg.norm(true)))
  assert cos > 0.6, cos


@pytest.fixture(scope="module")
def quad_run():
  cfg = es.ESConfig(population=16, sigma=0.1, learning_rate=0.05)
  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros((4,))}     # D = 10 as a pytree
  state, unravel = es.init(params, cfg, jax.random.PRNGKey(0))
  fit = lambda p, k: quadratic(jnp.concatenate([p["b"], p["w"].ravel()]))
  gen = es.make_generation(fit, unravel, cfg)
  return jax.jit(es.run, static_argnums=(0, 2)), gen, state, unravel


def test_es_climbs_the_quadratic(quad_run):
  run, gen, state, unravel = quad_run
  out, metrics = run(gen, state, 150)
  assert metrics.fitness_mean.shape == (150,) and metrics.fitness.shape == (150, 16)
  assert int(out.step) == 150
  before = float(quadratic(state.mean))
  after = float(quadratic(out.mean))
  assert after > 0.2 * before, (before, after)     # f <= 0: within 20% of the start's deficit
  assert set(unravel(out.mean)) == {"w", "b"}


@pytest.fixture(scope="module")
def lifetime_run():
  """A tiny ES over whole lifetimes of a lifetime-aware rule, N drawn per generation."""
  import envs
  from lpg.lifetime import LifetimeConfig, World, make_lifetime, mean_fitness, sample_planned
  from lpg.networks import AgentConfig
  from lpg.rule import LPGConfig, LPGRule, make_hypers
  from lpg.update import OptimizerConfig
  rule = LPGRule(LPGConfig(hidden=8, y_dim=4, phi_hidden=4, lifetime_inputs=True))
  life = make_lifetime(envs.make("chain/short"), rule, AgentConfig("tabular"),
                       OptimizerConfig("sgd"), LifetimeConfig(6, 5, 4), diagnostics=False)
  worlds = [World(life, make_hypers(40.0), (1.0, 0.0))]
  cfg = es.ESConfig(population=4)
  state, unravel = es.init(rule.init(jax.random.PRNGKey(0)), cfg, jax.random.PRNGKey(1))
  gen = es.make_generation(lambda p, k, n: mean_fitness(worlds, p, k, n, seeds=2), unravel, cfg,
                           context_fn=lambda k: sample_planned(k, 2, 6))
  return jax.jit(es.run, static_argnums=(0, 2)), gen, state, unravel


@pytest.mark.parametrize("which", ["quad_run", "lifetime_run"])
def test_resume_is_bit_exact(which, request):
  run, gen, state, _ = request.getfixturevalue(which)
  # One compiled length (3): straight = 3 + 3 in memory; resumed = 3, host round trip, 3.
  half, _ = run(gen, state, 3)
  straight, m_straight = run(gen, half, 3)
  # What a checkpoint holds: host numpy arrays, rebuilt into the same tree.
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(half))
  restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(np.array(x)) for x in leaves])
  resumed, m_resumed = run(gen, restored, 3)
  for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(m_straight.fitness, m_resumed.fitness)
  assert int(resumed.step) == 6


SHARD_SCRIPT = textwrap.dedent("""
  import sys
  import jax, jax.numpy as jnp, numpy as np
  import envs
  from lpg.lifetime import LifetimeConfig, fitness, make_lifetime
  from lpg.networks import AgentConfig
  from lpg.rule import LPGConfig, LPGRule, make_hypers
  from lpg.update import OptimizerConfig
  from meta_train import es
  from meta_train.distributed import make_mesh

  rule = LPGRule(LPGConfig(hidden=8, y_dim=4, phi_hidden=4, lifetime_inputs=True))
  life = make_lifetime(envs.make("chain/short"), rule, AgentConfig("tabular"),
                       OptimizerConfig("sgd"), LifetimeConfig(4, 5, 4), diagnostics=False)
  fit = lambda p, k: fitness(life(p, make_hypers(40.0), k), reference=(1.0, 0.0))
  cfg = es.ESConfig(population=8, shared_eval_key=False)
  state, unravel = es.init(rule.init(jax.random.PRNGKey(0)), cfg, jax.random.PRNGKey(1))
  mesh = make_mesh()
  gen = es.make_generation(fit, unravel, cfg, mesh)
  out, m = jax.jit(es.run, static_argnums=(0, 2))(gen, state, 2)
  np.save(sys.argv[1], np.asarray(out.mean))
  print(len(jax.devices()), "devices")
""")
