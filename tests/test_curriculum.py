"""The level curriculum (``meta_train.curriculum``): prioritised sampling, table updates,
bit-for-bit resumption through numpy, valid training-stream seeds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from meta_train.curriculum import (Curriculum, CurriculumConfig, CurriculumState, learnability,
                                   positive_value_loss, stats, update)

SEEDS = jnp.arange(8, dtype=jnp.int32) * 2           # training-stream seeds 0, 2, ..., 14
SCORES = jnp.arange(8, dtype=jnp.float32) / 10       # level 14 scores highest


@pytest.fixture(scope="module")
def jitted():
  cur = Curriculum(CurriculumConfig(table_size=8, replay_prob=1.0, staleness_coef=0.0,
                                    temperature=0.3, num_levels=64))
  return cur, jax.jit(cur.sample, static_argnums=2), jax.jit(update)


def test_rigged_sampling_favours_high_scores(jitted):
  cur, sample, upd = jitted
  state = upd(cur.init(jax.random.PRNGKey(0)), SEEDS, SCORES)
  seeds, from_replay = sample(state, jax.random.PRNGKey(1), 4000)
  assert bool(jnp.all(from_replay))
  freq = np.array([np.mean(np.asarray(seeds) == s) for s in np.asarray(SEEDS)])
  want = (1.0 / np.arange(8, 0, -1)) ** (1 / 0.3)        # rank 1 = level 14
  np.testing.assert_allclose(freq, want / want.sum(), atol=0.03)
  assert freq[-1] > 0.85 and freq[0] < 0.01


def test_replay_probs_by_hand():
  cur = Curriculum(CurriculumConfig(table_size=4, temperature=1.0, staleness_coef=0.5))
  state = update(cur.init(), jnp.array([2, 4]), jnp.array([0.1, 0.3]))   # clock 0 -> 1
  state = update(state, jnp.array([6]), jnp.array([0.2]))                # clock 1 -> 2
  # ranks: 4 -> 1, 6 -> 2, 2 -> 3; staleness: 2 and 4 seen at 0 (2), 6 at 1 (1); slot 3 empty.
  p_rank = np.array([1 / 3, 1, 1 / 2, 0]) / (1 + 1 / 2 + 1 / 3)
  p_stale = np.array([2, 2, 1, 0]) / 5
  np.testing.assert_allclose(cur.replay_probs(state), 0.5 * p_rank + 0.5 * p_stale, rtol=1e-6)


def test_update_replaces_lowest_and_refreshes_known():
  state = update(Curriculum(CurriculumConfig(table_size=3)).init(),
                 jnp.array([2, 4, 6]), jnp.array([0.5, 0.1, 0.3]))
  state = update(state, jnp.array([8, 10, 6, 12, 14]),
                 jnp.array([0.4, 0.05, 0.9, jnp.nan, 0.2]))
  # 8 (0.4) replaces 4 (0.1); 10 (0.05) is below the worst (0.3): dropped; 6 refreshed to 0.9;
  # 12 has a NaN score: ignored; 14 (0.2) is below the worst (0.4): dropped.
  got = dict(zip(np.asarray(state.seeds).tolist(), np.asarray(state.scores).tolist()))
  assert got == pytest.approx({2: 0.5, 8: 0.4, 6: 0.9})
  assert int(state.clock) == 2
  assert dict(zip(np.asarray(state.seeds).tolist(), np.asarray(state.visits).tolist()))[6] == 2
  np.testing.assert_array_equal(state.last_seen, [0, 1, 1])


def test_empty_table_samples_fresh_only(jitted):
  cur, sample, _ = jitted
  seeds, from_replay = sample(cur.init(), jax.random.PRNGKey(3), 64)
  assert not bool(jnp.any(from_replay)) and bool(jnp.all(seeds >= 0))


def test_sampled_seeds_are_valid_training_stream_seeds(jitted):
  """Fresh and replayed seeds are even (train split), below 2 * num_levels, and build levels."""
  cur = Curriculum(CurriculumConfig(table_size=8, replay_prob=0.5, num_levels=64))
  state = update(cur.init(), SEEDS, SCORES)
  seeds, from_replay = cur.sample(state, jax.random.PRNGKey(4), 256)
  s, r = np.asarray(seeds), np.asarray(from_replay)
  assert 0.35 < r.mean() < 0.65
  assert np.all(s % 2 == 0) and np.all((0 <= s) & (s < 128))
  assert set(s[r]) <= set(np.asarray(SEEDS).tolist())
  env = envs.make("procgen/tabular", num_levels=64)
  levels = jax.vmap(env.level)(seeds[:4])
  np.testing.assert_array_equal(levels.level_seed, seeds[:4])


def _run(cur, sample, upd, state, key, steps):
  """A few turnovers: sample, score the sampled levels by a fixed rule, update."""
  out = []
  for _ in range(steps):
    key, k = jax.random.split(key)
    seeds, replay = sample(state, k, 6)
    state = upd(state, seeds, learnability((seeds % 17) / 16.0))
    out.append((np.asarray(seeds), np.asarray(replay)))
  return state, out


def test_state_round_trips_through_numpy_and_resumes_bit_for_bit(jitted):
  cur = Curriculum(CurriculumConfig(table_size=8, replay_prob=0.6, num_levels=64))
  sample, upd = jax.jit(cur.sample, static_argnums=2), jitted[2]
  state, _ = _run(cur, sample, upd, cur.init(), jax.random.PRNGKey(5), 4)
  saved = {k: np.asarray(v) for k, v in state._asdict().items()}      # a checkpoint's leaves
  restored = CurriculumState(**{k: jnp.asarray(v) for k, v in saved.items()})
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    assert a.dtype == b.dtype and a.shape == b.shape
  end_a, run_a = _run(cur, sample, upd, state, jax.random.PRNGKey(6), 5)
  end_b, run_b = _run(cur, sample, upd, restored, jax.random.PRNGKey(6), 5)
  for (sa, ra), (sb, rb) in zip(run_a, run_b):
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(ra, rb)
  for a, b in zip(jax.tree_util.tree_leaves(end_a), jax.tree_util.tree_leaves(end_b)):
    np.testing.assert_array_equal(a, b)
  assert any(r.any() for _, r in run_a)                                 # replay did happen


def test_stats_and_scores_by_hand():
  state = update(Curriculum(CurriculumConfig(table_size=4)).init(),
                 jnp.array([2, 4]), jnp.array([0.2, 0.4]))
  s = stats(state, jnp.array([True, False, False, False]))
  assert int(s["levels"]) == 2 and float(s["replay_share"]) == 0.25
  assert float(s["mean_score"]) == pytest.approx(0.3)
  assert float(s["max_score"]) == pytest.approx(0.4)
  assert float(s["mean_staleness"]) == 1.0
  np.testing.assert_allclose(learnability(jnp.array([-0.5, 0.0, 0.5, 0.9, 1.5])),
                             [0.0, 0.0, 0.25, 0.09, 0.0], atol=1e-7)
  assert float(positive_value_loss(jnp.array([[1.0, -2.0], [3.0, 0.0]]))) == 1.0


def test_config_validation():
  for bad in (dict(table_size=0), dict(replay_prob=1.5), dict(temperature=0.0),
              dict(staleness_coef=-0.1), dict(num_levels=0)):
    with pytest.raises(ValueError):
      CurriculumConfig(**bad)
