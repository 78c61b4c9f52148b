"""The population's bookkeeping, one pure function at a time, on hand-written arrays."""
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from meta_train import population
from meta_train.population import EnvGroup


def _lives(age, horizon, w):
  """A stand-in Lifetime batch: only the fields the bookkeeping reads."""
  from lpg.meta_objective import Lifetime
  n = len(age)
  z = jnp.zeros((n,))
  return Lifetime(agent_params={"w": jnp.asarray(w, jnp.float32)}, opt_state=z, critic_params=z,
                  critic_opt_state=z, env_params=z, env=z, hypers=z,
                  age=jnp.asarray(age, jnp.int32), horizon=jnp.asarray(horizon, jnp.int32))


def test_stagger_ages_are_whole_inner_steps_spread_over_the_lifetime():
  np.testing.assert_array_equal(population.stagger_ages(4, 60, 3), [0, 15, 30, 45])
  np.testing.assert_array_equal(population.stagger_ages(4, 8, 3), [0, 0, 3, 6])


def test_track_returns_moving_average():
  metrics = SimpleNamespace(return_sum=jnp.array([6.0, 0.0, 2.0]),
                            episodes=jnp.array([2.0, 0.0, 1.0]))
  ema, seen = population.track_returns(jnp.array([1.0, 5.0, 0.0]), jnp.array([True, True, False]),
                                       metrics, decay=0.7)
  # seen and an episode: 0.7 * 1 + 0.3 * 3; no episode: unchanged; first value: replaces.
  np.testing.assert_allclose(ema, [1.6, 5.0, 2.0], rtol=1e-6)
  np.testing.assert_array_equal(seen, [True, True, True])


def test_lifetime_ends_at_its_horizon_or_when_non_finite_and_knows_its_progress():
  lives = _lives(age=[3, 4, 1], horizon=[4, 4, 4], w=[[0.0], [0.0], [np.nan]])
  np.testing.assert_array_equal(population.lifetime_ended(lives), [False, True, True])
  np.testing.assert_allclose(lives.progress, [0.75, 1.0, 0.25])


def test_turnover_replaces_only_ended_lifetimes():
  group = EnvGroup(lives=_lives([4, 2], [4, 4], [[1.0], [2.0]]), arms=jnp.array([0, 1]),
                   ret_ema=jnp.zeros(2), ret_seen=jnp.zeros(2, bool),
                   scored=jnp.array([False, False]))
  fresh = _lives([0, 0], [4, 4], [[9.0], [9.0]])
  new = population.turnover(group, group.lives, jnp.array([0.5, 0.7]), jnp.array([True, True]),
                            jnp.array([True, False]), fresh, jnp.array([3, 3]))
  np.testing.assert_array_equal(new.lives.agent_params["w"][:, 0], [9.0, 2.0])
  np.testing.assert_array_equal(new.lives.age, [0, 2])
  np.testing.assert_array_equal(new.arms, [3, 1])
  np.testing.assert_allclose(new.ret_ema, [0.0, 0.7])
  np.testing.assert_array_equal(new.ret_seen, [False, True])
  np.testing.assert_array_equal(new.scored, [True, False])


def test_normalise():
  np.testing.assert_allclose(population.normalise((1.0, -1.0), jnp.array([0.0, 1.0])), [0.5, 1.0])
  assert float(population.normalise(None, jnp.array(3.0))) == 3.0
