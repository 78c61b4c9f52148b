"""The compiled meta-update: staggering, lifetime resets, chunked gradients, the bandit."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import bandit
from meta_train.config import PRESETS
from meta_train.trainer import make_meta_train

TINY = dataclasses.replace(PRESETS["tiny"], agents_per_env=4, lifetime_updates=4)


@pytest.fixture(scope="module")
def tiny():
  mt = make_meta_train(TINY)
  return mt, mt.init(0)


def test_population_is_staggered_and_lifetimes_restart(tiny):
  mt, state = tiny
  ages = np.asarray(state.groups[0].lives.age)
  assert len(set(ages.tolist())) > 1, ages          # early and late agents from the start
  state2, m1 = mt.run(state, 1)
  state2, metrics = mt.run(state2, 1)
  ages2 = np.asarray(state2.groups[0].lives.age)
  # Lifetimes of 4 updates with K=2: every agent has been reset at least once by now,
  # and a reset agent restarts at age 0 (then advances by K).
  assert ages2.max() < TINY.lifetime_updates
  assert metrics.meta_loss.shape == (1,)
  assert int(state2.step) == 2
  assert np.isfinite(np.asarray(metrics.meta_loss)).all()


def test_chunked_gradient_equals_full_batch(tiny):
  full, _ = tiny
  chunked = make_meta_train(dataclasses.replace(TINY, agent_chunk=2))
  s_full, m_full = full.run(full.init(0), 1)
  s_chunk, m_chunk = chunked.run(chunked.init(0), 1)
  np.testing.assert_allclose(m_full.meta_loss, m_chunk.meta_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m_full.grad_norm, m_chunk.grad_norm, rtol=1e-4, atol=1e-7)
  for a, b in zip(jax.tree_util.tree_leaves(s_full.rule_params),
                  jax.tree_util.tree_leaves(s_chunk.rule_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_chunk_is_refused():
  with pytest.raises(ValueError, match="must divide"):
    dataclasses.replace(TINY, agent_chunk=3)


def test_bandit_prefers_arms_with_higher_returns():
  b = bandit.init(num_envs=2, num_arms=3)
  # Untried arms are preferred first.
  b = bandit.update(b, 0, jnp.array([0, 0, 1]), jnp.array([1.0, 0.8, 0.1]),
                    jnp.array([True, True, True]), window=10)
  p = bandit.probabilities(b, temperature=0.1, bonus=0.2)
  assert int(jnp.argmax(p[0])) == 2                  # never tried
  b = bandit.update(b, 0, jnp.array([2]), jnp.array([0.0]), jnp.array([True]), window=10)
  p = bandit.probabilities(b, temperature=0.1, bonus=0.2)
  assert int(jnp.argmax(p[0])) == 0                  # best mean return (0.9)
  np.testing.assert_allclose(b.value[0, 0], 0.9, rtol=1e-6)
  np.testing.assert_allclose(b.trials[0], [2, 1, 1])
  np.testing.assert_allclose(p[1], 1 / 3, rtol=1e-6)  # env 1 untouched: uniform
  # Masked-out lifetimes do not count.
  b2 = bandit.update(b, 0, jnp.array([1]), jnp.array([5.0]), jnp.array([False]), window=10)
  np.testing.assert_array_equal(b2.value, b.value)
  draws = bandit.sample(jax.random.PRNGKey(0), b, 0, 200, 0.1, 0.2)
  assert np.mean(np.asarray(draws) == 0) > 0.6
