"""Dynamics of the tabular and random grid worlds, and the tabular optimum solver."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import grid_common as gc
from envs import returns
from envs.random_grid import RandomGrid, RandomGridConfig, RandomGridState
from envs.tabular import TabularConfig, TabularGrid, TabularState


def _tab(layout, objs, max_steps=50, num_actions=5):
  return TabularGrid(TabularConfig(tuple(layout), gc.objects(*objs), max_steps),
                     num_actions=num_actions, name="test")


def _state(cell, mask, time=0):
  return TabularState(jnp.int32(cell), jnp.int32(mask), jnp.int32(time))


# 5-action moves: 0 stay, 1 up, 2 right, 3 down, 4 left.
STAY, UP, RIGHT, DOWN, LEFT = range(5)


@pytest.fixture(scope="module")
def line_env():
  """1x4 corridor; objects: +1 (never ends), -1 (always ends), +2 (ends w.p. 0)."""
  env = _tab(["...."], [(1, (1, 0, 0)), (1, (-1, 1, 0)), (1, (2, 0, 0))], max_steps=10)
  params = env.params_from_cells([1, 2, 3])
  return env, params, jax.jit(env.step)


def test_collect_each_object_gives_its_reward(line_env):
  env, params, step = line_env
  key = jax.random.PRNGKey(0)
  out = step(key, _state(0, 0b111), RIGHT, params)
  assert float(out.reward) == 1.0 and not bool(out.done)
  assert int(out.state.cell) == 1 and int(out.state.mask) == 0b110
  assert int(out.obs) == 1 * 8 + 0b110
  out = step(key, _state(1, 0b110), RIGHT, params)   # -1 object, end prob 1
  assert float(out.reward) == -1.0 and bool(out.terminated) and not bool(out.truncated)
  out = step(key, _state(2, 0b101), RIGHT, params)  # -1 absent, +2 present
  assert float(out.reward) == 2.0 and not bool(out.done)
  out = step(key, _state(2, 0b001), RIGHT, params)  # nothing present there
  assert float(out.reward) == 0.0


def test_termination_resets_state(line_env):
  env, params, step = line_env
  out = step(jax.random.PRNGKey(1), _state(1, 0b110, time=4), RIGHT, params)
  assert bool(out.terminated)
  assert int(out.state.time) == 0 and int(out.state.mask) == 0b111
  assert int(out.state.cell) == 0  # the only object-free start cell
  assert int(out.obs) == 0 * 8 + 0b111


def test_walls_and_edges_block():
  env = _tab([".#.", "..."], [(1, (1, 0, 0))])
  params = env.params_from_cells([3])  # free cells: 0:(0,0) 1:(0,2) 2:(1,0) 3:(1,1) 4:(1,2)
  step = jax.jit(env.step)
  key = jax.random.PRNGKey(0)
  for cell, action, expected in [(0, RIGHT, 0), (0, UP, 0), (0, LEFT, 0), (1, LEFT, 1),
                                 (0, DOWN, 2), (2, RIGHT, 3), (4, UP, 1), (3, UP, 3)]:
    out = step(key, _state(cell, 1), action, params)
    assert int(out.state.cell) == expected, (cell, action)


def test_nine_and_eighteen_action_sets():
  objs = [(1, (1, 0, 0))]
  env9 = _tab(["...", "..."], objs, num_actions=9)
  env18 = _tab(["...", "..."], objs, num_actions=18)
  assert env9.num_actions == 9 and env18.num_actions == 18
  p = env9.params_from_cells([4])  # (1,1)
  key = jax.random.PRNGKey(0)
  out = env9.step(key, _state(0, 1), 4, p)  # down-right from (0,0) -> (1,1), collect on contact
  assert int(out.state.cell) == 4 and float(out.reward) == 1.0
  out = env18.step(key, _state(0, 1), 4, p)  # same move without collecting
  assert int(out.state.cell) == 4 and float(out.reward) == 0.0 and int(out.state.mask) == 1
  out = env18.step(key, _state(0, 1), 9 + 4, p)  # with collecting
  assert float(out.reward) == 1.0 and int(out.state.mask) == 0


def test_truncation_at_max_episode_steps(line_env):
  env, params, step = line_env
  out = step(jax.random.PRNGKey(0), _state(0, 0b111, time=9), STAY, params)
  assert bool(out.truncated) and not bool(out.terminated)
  assert int(out.state.time) == 0
  out = step(jax.random.PRNGKey(0), _state(0, 0b111, time=8), STAY, params)
  assert not bool(out.done) and int(out.state.time) == 9


def test_reappearance_rate():
  p = 0.2
  env = _tab(["..."], [(1, (1, 0, p))], max_steps=10**6)
  params = env.params_from_cells([2])
  n = 20000
  keys = jax.random.split(jax.random.PRNGKey(42), n)
  states = TabularState(jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32))
  out = jax.jit(jax.vmap(env.step, in_axes=(0, 0, None, None)))(keys, states, STAY, params)
  rate = float(out.state.mask.mean())
  assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n)
  # Probability 1 reappears at the next step but not in the step of collection.
  env1 = _tab(["..."], [(1, (1, 0, 1))])
  p1 = env1.params_from_cells([1])
  out = env1.step(jax.random.PRNGKey(0), _state(0, 1), RIGHT, p1)
  assert int(out.state.mask) == 0
  out = env1.step(jax.random.PRNGKey(1), out.state, STAY, p1)
  assert int(out.state.mask) == 1 and float(out.reward) == 0.0


def test_termination_probability_statistics():
  env = _tab(["..."], [(1, (1, 0.3, 0))])
  params = env.params_from_cells([1])
  n = 20000
  keys = jax.random.split(jax.random.PRNGKey(7), n)
  states = TabularState(jnp.zeros(n, jnp.int32), jnp.ones(n, jnp.int32), jnp.zeros(n, jnp.int32))
  out = jax.jit(jax.vmap(env.step, in_axes=(0, 0, None, None)))(keys, states, RIGHT, params)
  assert float(out.reward.mean()) == 1.0
  assert abs(float(out.terminated.mean()) - 0.3) < 4 * np.sqrt(0.21 / n)


def test_tabular_spec_tables():
  expected = {"dense": (121, 4, 500), "sparse": (169, 2, 50), "long_horizon": (121, 4, 1000),
              "longer_horizon": (52, 7, 2000), "long_dense": (104, 4, 2000)}
  for name, (cells, n_obj, steps) in expected.items():
    env = envs.make(f"tabular/{name}")
    assert env.num_actions == 9
    assert (env.num_cells, env.num_objects, env.max_episode_steps) == (cells, n_obj, steps)
    assert env.obs_spec.kind == "index" and env.obs_spec.num_values == cells * 2**n_obj
  assert envs.make("tabular/dense", num_actions=18).num_actions == 18
  assert envs.make("tabular/dense", num_actions=5).num_actions == 5
  dense = envs.make("tabular/dense")
  np.testing.assert_allclose(dense.rewards, [1, 1, -1, -1])
  np.testing.assert_allclose(dense.end_probs, [0, 0, 0.5, 0])
  np.testing.assert_allclose(dense.respawn_probs, [0.05, 0.05, 0.1, 0.5])


def test_sample_params_distinct_and_vmappable():
  env = envs.make("tabular/longer_horizon")
  params = jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(0), 3))
  cells = np.asarray(params.obj_cells)
  assert cells.shape == (3, 7)
  for row, starts in zip(cells, np.asarray(params.start_cells)):
    assert len(set(row.tolist())) == 7
    assert set(row.tolist()).isdisjoint(starts.tolist())
    assert len(row) + len(starts) == env.num_cells
  assert not np.array_equal(cells[0], cells[1])


def test_vmap_over_lifetimes_and_determinism():
  env = envs.make("tabular/dense")
  params = jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(0), 3))

  @jax.jit
  def rollout(key):
    k_r, k_s = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k_r, 3), params)

    def body(state, key):
      k_a, k_e = jax.random.split(key)
      a = jax.random.randint(k_a, (3,), 0, env.num_actions)
      out = jax.vmap(env.step)(jax.random.split(k_e, 3), state, a, params)
      return out.state, (out.obs, out.reward)

    return jax.lax.scan(body, state, jax.random.split(k_s, 300))[1]

  obs1, rew1 = rollout(jax.random.PRNGKey(5))
  obs2, rew2 = rollout(jax.random.PRNGKey(5))
  np.testing.assert_array_equal(obs1, obs2)
  np.testing.assert_array_equal(rew1, rew2)
  assert obs1.shape == (300, 3)
  assert int(obs1.min()) >= 0 and int(obs1.max()) < env.obs_spec.num_values
  assert not np.array_equal(obs1[:, 0], obs1[:, 1])


# ------------------------------------------------------------- optimum solver
def test_optimal_solver_hand_solved():
  # 1x3 corridor, one +1 object that ends the episode, at the right end.
  env = _tab(["..."], [(1, (1, 1, 0))], max_steps=3)
  p = env.params_from_cells([2])  # starts: cells 0 (2 steps away) and 1 (1 step away)
  assert returns.tabular_return(env, p, "optimal", horizon=1) == pytest.approx(0.5)
  assert returns.tabular_return(env, p, "optimal", horizon=2) == pytest.approx(1.0)
  # Random policy, horizon 1, from cell 1: P(right) = 1/5 -> 0.2; from cell 0: 0.
  assert returns.tabular_return(env, p, "random", horizon=1) == pytest.approx(0.1)
  # 1x2, a +1 object that never ends the episode and always reappears one step
  # after the step it was collected in: collect at steps 1, 3 of 4 -> 2.
  env = _tab([".."], [(1, (1, 0, 1))], max_steps=4)
  p = env.params_from_cells([1])
  assert returns.tabular_return(env, p, "optimal") == pytest.approx(2.0)
  # ... with reappear probability 1/2 and 3 steps: collect at step 1 (+1); at
  # step 2 nothing to collect (it reappears w.p. 1/2 at the end of step 2); at
  # step 3 collect w.p. 1/2 -> 1.5.
  env = _tab([".."], [(1, (1, 0, 0.5))], max_steps=3)
  assert returns.tabular_return(env, env.params_from_cells([1]), "optimal") == pytest.approx(1.5)


def test_optimal_solver_matches_simulation():
  """The DP's random-policy value equals a Monte-Carlo rollout of the env itself."""
  env = _tab(["....", "..#."], [(1, (1, 0, 0.3)), (1, (-1, 0.5, 0.6)), (1, (2, 1, 0))],
             max_steps=12, num_actions=9)
  params = env.sample_params(jax.random.PRNGKey(3))
  exact = returns.tabular_return(env, params, "random")
  mc, sem = returns.random_return_mc(env, params, num_envs=20000, seed=1)
  assert abs(mc - exact) < 4 * sem + 1e-3
  assert returns.tabular_return(env, params, "optimal") >= exact


def test_eighteen_actions_optimum_not_below_nine():
  params = None
  e9 = envs.make("tabular/sparse", num_actions=9)
  e18 = envs.make("tabular/sparse", num_actions=18)
  params = e9.sample_params(jax.random.PRNGKey(0))
  o9 = returns.tabular_return(e9, params, "optimal")
  o18 = returns.tabular_return(e18, params, "optimal")
  assert o18 >= o9 - 1e-9 and o9 == pytest.approx(1.0)


# --------------------------------------------------------------- random grids
@pytest.fixture(scope="module")
def rgrid():
  env = RandomGrid(RandomGridConfig(("...",), gc.objects((1, (1, 0, 0)), (1, (-1, 1, 0))), 20),
                   num_actions=5, name="test")
  return env, jax.jit(env.step)


def test_random_grid_collect_and_terminate(rgrid):
  env, step = rgrid
  p = env.default_params()
  s = RandomGridState(jnp.int32(0), jnp.array([1, 2], jnp.int32), jnp.array([True, True]),
                      jnp.int32(0))
  out = step(jax.random.PRNGKey(0), s, RIGHT, p)
  assert float(out.reward) == 1.0 and not bool(out.done)
  np.testing.assert_array_equal(out.state.mask, [False, True])
  obs = np.asarray(out.obs)
  assert obs.shape == (1, 3, 3) and obs.dtype == np.uint8
  np.testing.assert_array_equal(obs[0, :, 0], [0, 0, 0])  # +1 type gone
  np.testing.assert_array_equal(obs[0, :, 1], [0, 0, 1])  # -1 type at col 2
  np.testing.assert_array_equal(obs[0, :, 2], [0, 1, 0])  # agent at col 1
  out = step(jax.random.PRNGKey(0), out.state, RIGHT, p)
  assert float(out.reward) == -1.0 and bool(out.terminated)
  assert np.asarray(out.state.mask).all() and int(out.state.time) == 0


def test_random_grid_reset_distinct_and_uniform():
  env = envs.make("random/small")
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, env.default_params())
  cells = np.concatenate([np.asarray(state.agent)[:, None], np.asarray(state.obj_pos)], 1)
  assert all(len(set(r)) == 5 for r in cells.tolist())
  free = set(env.geometry.free_cells.tolist())
  assert set(cells.reshape(-1).tolist()) == free  # walls never used, every free cell used
  counts = np.bincount(np.asarray(state.agent), minlength=35)[env.geometry.free_cells]
  assert counts.min() > 4000 / 33 * 0.6 and counts.max() < 4000 / 33 * 1.4
  obs = np.asarray(obs)
  assert obs.shape == (4000, 5, 7, 3)  # 2 object types + agent
  assert (obs.sum(axis=(1, 2)) == np.array([2, 2, 1])).all()


def test_random_grid_reappears_elsewhere_without_overlap():
  env = envs.make("random/very_dense")  # one +1 object, reappear prob 1
  step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
  n = 256
  _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), n),
                                                    env.default_params())
  key = jax.random.PRNGKey(1)
  total = 0.0
  for _ in range(60):
    key, ka, ks = jax.random.split(key, 3)
    out = step(jax.random.split(ks, n), state, jax.random.randint(ka, (n,), 0, 9),
               env.default_params())
    total += float(out.reward.sum())
    ok = ~np.asarray(out.state.mask[:, 0]) | (np.asarray(out.state.obj_pos[:, 0])
                                             != np.asarray(out.state.agent))
    assert ok.all()
    state = out.state
  assert total > 0


def test_random_grid_spec_tables():
  expected = {"dense": ((11, 11, 4), 500), "long_horizon": ((11, 11, 3), 1000),
              "small": ((5, 7, 3), 500), "small_sparse": ((5, 7, 3), 50),
              "very_dense": ((11, 11, 2), 2000)}
  for name, (shape, steps) in expected.items():
    env = envs.make(f"random/{name}")
    assert env.obs_spec.shape == shape and env.obs_spec.kind == "image"
    assert env.max_episode_steps == steps and env.num_actions == 9
  assert envs.make("random/small").geometry.num_free == 33
  assert envs.make("random/dense", num_actions=18).num_actions == 18
