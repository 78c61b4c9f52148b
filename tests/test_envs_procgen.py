"""Procedurally generated families (envs.procgen) and their exact returns (envs.procgen_returns)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import procgen, procgen_returns, returns
from envs.procgen import GridFamilyConfig

NUM_LEVELS = 128


@functools.lru_cache(maxsize=None)
def _family(name: str, **overrides):
  """``(env, jitted vmap of sample_params)``, built once per test module."""
  env = envs.make(name, **overrides)
  return env, jax.jit(jax.vmap(env.sample_params))


def _draw(name, seed=0, n=64, **overrides):
  """``(env, levels)``: ``n`` levels of family ``name`` drawn from ``PRNGKey(seed)``."""
  env, draw = _family(name, **overrides)
  return env, draw(jax.random.split(jax.random.PRNGKey(seed), n))


def _level_rows(levels) -> np.ndarray:
  """``[L, F]`` float64: every leaf of each level flattened side by side."""
  leaves = jax.tree_util.tree_leaves(levels)
  n = leaves[0].shape[0]
  return np.concatenate([np.asarray(x, np.float64).reshape(n, -1) for x in leaves], axis=1)


def _take(levels, i):
  return jax.tree_util.tree_map(lambda x: x[i], levels)


@pytest.fixture(scope="module")
def tabular():
  return _draw("procgen/tabular", n=NUM_LEVELS)


# ---------------------------------------------------------------- registration
def test_registry_suites_and_overrides():
  assert envs.suite("procgen") == ("procgen/tabular", "procgen/random", "procgen/chain")
  assert envs.suite("procgen_val") == tuple(n + "_val" for n in envs.suite("procgen"))
  assert set(envs.suite("procgen") + envs.suite("procgen_val")) <= set(envs.list_envs())
  assert len(envs.suite("all")) == 15  # the named worlds are unchanged.
  env = envs.make("procgen/tabular", num_levels=8, num_actions=5)
  assert env.config.num_levels == 8 and env.num_actions == 5 and env.name == "procgen/tabular"
  assert envs.make("procgen/chain_val").config.split == "val"
  with pytest.raises(ValueError, match="unknown GridFamilyConfig fields"):
    envs.make("procgen/random", colour=3)
  with pytest.raises(ValueError, match="split"):
    envs.make("procgen/chain", split="test")
  with pytest.raises(ValueError, match="num_actions"):
    envs.make("procgen/tabular", num_actions=7)


# ------------------------------------------------------- determinism / splits
@pytest.mark.parametrize("name", envs.SUITES["procgen"])
def test_levels_distinct_per_key_and_identical_for_equal_keys(name):
  env, a = _draw(name)
  _, b = _draw(name)
  rows = _level_rows(a)
  np.testing.assert_array_equal(rows, _level_rows(b))
  assert len({r.tobytes() for r in rows}) == 64
  one = lambda lv: _level_rows(jax.tree_util.tree_map(lambda x: x[None], lv))
  np.testing.assert_allclose(one(env.level(jnp.asarray(int(a.level_seed[3])))),
                             one(_take(a, 3)), rtol=1e-6)   # eager vs compiled: last-ulp.


@pytest.mark.parametrize("name", envs.SUITES["procgen"])
def test_train_and_validation_levels_are_disjoint(name):
  _, lt = _draw(name)
  _, lv = _draw(name + "_val")
  assert np.all(np.asarray(lt.level_seed) % 2 == 0) and np.all(np.asarray(lv.level_seed) % 2 == 1)
  assert not {r.tobytes() for r in _level_rows(lt)} & {r.tobytes() for r in _level_rows(lv)}



def test_finite_level_counts_keep_the_splits_apart():
  keys = jax.random.split(jax.random.PRNGKey(0), 64)
  for split, want in (("train", {0, 2, 4}), ("val", {1, 3, 5})):   # GROOVE's level count.
    seeds = jax.vmap(lambda k, s=split: procgen.level_seed(k, s, num_levels=3))(keys)
    assert set(np.asarray(seeds).tolist()) == want
  env = envs.make("procgen/chain_val", num_levels=3)
  assert int(env.sample_params(keys[0]).level_seed) in {1, 3, 5}
  with pytest.raises(ValueError, match="num_levels"):
    envs.make("procgen/tabular", num_levels=0)


# ----------------------------------------------------------------- grid levels
def test_grid_levels_are_well_formed(tabular):
  env, levels = tabular
  c = env.config
  free = np.asarray(levels.free)
  for i in range(NUM_LEVELS):
    lv = _take(levels, i)
    grid = free[i].reshape(c.max_height, c.max_width)
    anchor = int(np.argmax(free[i]))
    reach = np.asarray(procgen.connected_from(jnp.asarray(grid), anchor))
    np.testing.assert_array_equal(reach, grid)        # one connected component.
    assert grid.sum() >= c.max_objects + 2
    active = np.asarray(lv.active)
    cells = np.asarray(lv.obj_cells)[active]
    assert active[0] and len(set(cells.tolist())) == len(cells) and free[i][cells].all()
    start = np.asarray(lv.start)
    assert not start[cells].any() and (start <= free[i]).all()
    r, col = divmod(int(cells[0]), c.max_width)            # object 0 has an empty neighbour.
    beside = [(r + dr) * c.max_width + col + dc for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
              if 0 <= r + dr < c.max_height and 0 <= col + dc < c.max_width]
    assert start[beside].any()
    assert c.episode_steps[0] <= int(lv.limit) <= c.episode_steps[1]
    assert float(lv.rewards[0]) > 0
  n_obj = np.asarray(levels.active).sum(1)
  assert set(n_obj.tolist()) == {1, 2, 3, 4}
  assert (np.asarray(levels.rewards)[:, 1:] < 0).any()       # some levels have hazards.
  assert (free.sum(1) < c.max_height * c.max_width).all()   # sizes vary ...
  assert len(set(free.sum(1).tolist())) > 10                # ... and walls too.


def test_tabular_levels_are_solvable_optimal_beats_random(tabular):
  env, levels = tabular
  opt, rnd = map(np.asarray, procgen_returns.level_returns(env, levels))
  first = np.asarray(levels.rewards)[:, 0]          # object 0: the positive one.
  assert (opt >= 0.5 * first).all()                 # a positive reward is reachable ...
  assert (opt > rnd + 1e-5).all()                   # ... the optimum beats random everywhere ...
  assert np.median((opt - rnd) / first) > 1.0       # ... and typically by a lot.


def test_level_reference_per_family(tabular):
  env, levels = tabular
  lv = _take(levels, 5)
  opt, rnd = jax.jit(lambda x: procgen_returns.level_reference(env, x))(lv)
  want_opt, want_rnd = procgen_returns.level_returns(env, _take(levels, slice(5, 6)))
  np.testing.assert_allclose([opt, rnd], [want_opt[0], want_rnd[0]], rtol=1e-5)
  assert float(opt) == pytest.approx(returns.optimal_return("procgen/tabular", lv), rel=1e-5)
  chain, chain_levels = _draw("procgen/chain", n=4)
  opt, rnd = procgen_returns.level_reference(chain, _take(chain_levels, 0))
  assert float(opt) == float(chain_levels.scale[0]) and float(rnd) == 0.0
  assert procgen_returns.level_reference(envs.make("procgen/random"), None) is None


def _level_of_fixed(name: str, num_actions: int):
  """A family and the level that reproduces the fixed world ``name`` (default params)."""
  fixed = envs.make(name, num_actions=num_actions)
  g = fixed.geometry
  family = procgen.make_family(GridFamilyConfig(
      num_actions=num_actions, max_height=g.height, max_width=g.width, height=(g.height,) * 2,
      width=(g.width,) * 2, episode_steps=(fixed.max_episode_steps,) * 2))
  free = np.zeros(g.height * g.width, bool)
  free[g.free_cells] = True
  obj = g.free_cells[np.asarray(fixed.default_params().obj_cells)]
  moves = g.move_of_action if num_actions != 5 else np.array([0, 1, 3, 5, 7])
  level = procgen.grid_level(free, obj, np.ones(len(obj), bool), fixed.rewards, fixed.end_probs,
                             fixed.respawn_probs, moves, g.collect_of_action,
                             fixed.max_episode_steps)
  return fixed, family, level


@pytest.mark.parametrize("name,num_actions", [("tabular/dense", 18), ("tabular/long_dense", 5)])
def test_level_dp_matches_the_fixed_worlds_dp(name, num_actions):
  fixed, family, level = _level_of_fixed(name, num_actions)
  for policy in ("optimal", "random"):
    want = returns.tabular_return(fixed, fixed.default_params(), policy)
    got = float(jax.jit(lambda lv, p=policy: procgen_returns.level_return(family, lv, p))(level))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)


def test_level_dp_matches_monte_carlo_of_the_env(tabular):
  env, levels = tabular
  lv = _take(levels, 3)
  mean, sem = returns.random_return_mc(env, lv, num_envs=2048, seed=1)
  exact = float(procgen_returns.level_return(env, lv, "random"))
  assert abs(mean - exact) < 4 * sem + 1e-3, (mean, sem, exact)


# ---------------------------------------------- jit/vmap rollouts and dynamics
def _rollout(env, levels, steps, policy=None, seed=0):
  """Jitted, vmapped rollout over levels: ``(obs [T, L, ...], outs)`` with random actions."""
  n = jax.tree_util.tree_leaves(levels)[0].shape[0]

  @jax.jit
  def run(key):
    k0, k1 = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k0, n), levels)

    def body(carry, key):
      obs, state = carry
      k_a, k_s = jax.random.split(key)
      if policy is None:
        action = jax.random.randint(k_a, (n,), 0, env.num_actions)
      else:
        action = jax.vmap(policy)(obs, state)
      out = jax.vmap(env.step)(jax.random.split(k_s, n), state, action, levels)
      return (out.obs, out.state), (obs, out)
    return jax.lax.scan(body, (obs, state), jax.random.split(k1, steps))[1]
  return run(jax.random.PRNGKey(seed))


@pytest.mark.parametrize("name", envs.SUITES["procgen"])
def test_families_jit_vmap_over_levels(name):
  env, levels = _draw(name, n=8)
  obs, out = _rollout(env, levels, 60)
  assert obs.shape == (60, 8) + env.obs_spec.shape and obs.dtype == env.obs_spec.dtype
  assert np.isfinite(np.asarray(out.reward)).all()
  if env.obs_spec.kind == "index":
    assert 0 <= int(obs.min()) and int(obs.max()) < env.obs_spec.num_values


def test_level_episode_limit_truncates():
  env, levels = _draw("procgen/tabular", n=4, episode_steps=(7, 7), end_zero_prob=1.0,
                      end_one_prob=0.0)
  _, out = _rollout(env, levels, 21)
  truncated = np.asarray(out.truncated)
  assert truncated[[6, 13, 20]].all() and truncated.sum() == 12
  assert not np.asarray(out.terminated).any()


def test_random_grid_image_shows_agent_objects_and_walls():
  env, levels = _draw("procgen/random", n=8)
  obs, out = _rollout(env, levels, 30)
  img = np.asarray(obs[1:]).reshape(29, 8, -1, env.config.max_objects + 2)
  state = out.state
  n = env.config.max_objects
  np.testing.assert_array_equal(img[..., n + 1], ~np.asarray(levels.free)[None].repeat(29, 0))
  assert (img[..., n].sum(-1) == 1).all()
  np.testing.assert_array_equal(img[..., :n].sum(-2), np.asarray(state.present)[:-1])
  pos = np.asarray(state.pos)[:-1]
  assert np.take_along_axis(np.asarray(levels.free)[None], pos[..., None], -1).all()
  obj, present = np.asarray(state.obj_pos), np.asarray(state.present)
  for t, b in zip(*np.nonzero(present.sum(-1) > 0)):   # never two things on one cell.
    cells = obj[t, b][present[t, b]]
    assert len(set(cells.tolist())) == len(cells) and np.asarray(state.pos)[t, b] not in cells
  # Objects move between episodes (per-episode placement).
  assert len({tuple(p) for p in np.asarray(state.obj_pos).reshape(-1, n)}) > 8


def test_chain_levels_pay_scale_to_the_informed_policy():
  env, levels = _draw("procgen/chain", n=16, noisy_prob=0.0)
  c = env.config
  cue = lambda obs, state: jnp.argmax(obs[2:2 + c.num_actions])   # the cue at the first state.
  _, out = _rollout(env, levels, c.length[1], policy=cue)
  length = np.asarray(levels.length)
  reward = np.asarray(out.reward)
  done_at = np.argmax(np.asarray(out.terminated), axis=0)
  np.testing.assert_array_equal(done_at, length - 1)   # the first episode lasts N steps ...
  np.testing.assert_allclose(reward[done_at, np.arange(16)], np.asarray(levels.scale), rtol=1e-6)
  before = np.arange(c.length[1])[:, None] < done_at[None]
  assert (reward[before] == 0).all()                    # ... and pays only at its end.
  assert float(env.random_return(_take(levels, 0))) == 0.0


def test_chain_observation_hides_what_the_level_hides():
  env, levels = _draw("procgen/chain", n=32)
  obs, _ = _rollout(env, levels, 5)
  c = env.config
  obs = np.asarray(obs)
  position = obs[..., 2 + c.num_actions:2 + c.num_actions + c.length[1]]
  shown = np.asarray(levels.show_position)
  assert (position[:, ~shown] == 0).all() and (position[:, shown].sum(-1) == 1).all()
  noise = obs[..., -c.max_distractors:]
  used = np.asarray(levels.distractors)
  assert (noise[:, ~used] == 0).all() and noise[:, used].any()


def test_draws_distinct_from_is_uniform_without_replacement():
  cells = jnp.arange(10, dtype=jnp.int32) * 3
  draw = jax.jit(jax.vmap(lambda k: procgen.Draws(k, 3).distinct_from(cells, jnp.int32(7), 3)))
  picks = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 7000)))
  assert all(len(set(p.tolist())) == 3 for p in picks) and set(picks.ravel().tolist()) <= set(
      range(0, 21, 3))
  freq = np.bincount(picks.ravel() // 3, minlength=7) / 7000
  np.testing.assert_allclose(freq, 3 / 7, atol=0.03)          # each cell equally likely.
  np.testing.assert_allclose(np.bincount(picks[:, 2] // 3, minlength=7) / 7000, 1 / 7, atol=0.02)
