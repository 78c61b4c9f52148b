"""The shared grid world gives, seed for seed, what the separate implementations gave.

The digests were computed on main before the tabular and random grids were
merged into ``envs.grid_common.GridWorld`` (same script, commit c5bf002): 120
steps of ``step`` (auto-reset) and ``step_no_reset`` under random actions, from
``sample_params`` and ``reset``, with terminations and truncations among them.
"""
import hashlib

import jax
import numpy as np
import pytest

import envs

# (name, num_actions) -> (sha256[:16] of reset obs and every step output, reward sum,
#                         terminations, truncations) on main.
PINNED = {
    ("tabular/dense", 9): ("ad9d3e790370a7bc", 1.0, 0, 0),
    ("tabular/sparse", 18): ("b5a96b5f281d218a", 0.0, 0, 2),
    ("tabular/longer_horizon", 5): ("09de4c0358514157", 0.0, 3, 0),
    ("random/dense", 9): ("5f0dc832c732ef97", 1.0, 0, 0),
    ("random/very_dense", 18): ("5d66361636817972", 2.0, 0, 0),
    ("random/small_sparse", 5): ("5978025a51c94b83", -2.0, 6, 0),
    ("random/small", 9): ("826d7dd67764099f", -2.0, 1, 0),
}


def _trace(name, num_actions, steps=120, seed=3):
  env = envs.make(name, num_actions=num_actions)
  kp, kr, ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = env.sample_params(kp)
  obs, state = env.reset(kr, params)

  def body(state, k):
    ka, kst, kn = jax.random.split(k, 3)
    a = jax.random.randint(ka, (), 0, env.num_actions)
    out = env.step(kst, state, a, params)
    nr = env.step_no_reset(kn, state, a, params)
    return out.state, (out.obs, out.reward, out.terminated, out.truncated,
                       nr.obs, nr.reward, nr.terminated)

  _, ys = jax.lax.scan(body, state, jax.random.split(ks, steps))
  h = hashlib.sha256(np.asarray(obs).tobytes())
  for y in ys:
    h.update(np.asarray(y).tobytes())
  return h.hexdigest()[:16], float(ys[1].sum()), int(ys[2].sum()), int(ys[3].sum())


@pytest.mark.parametrize("name,num_actions", list(PINNED))
def test_same_seed_same_outputs_as_before_the_merge(name, num_actions):
  assert _trace(name, num_actions) == PINNED[(name, num_actions)]


def test_both_grids_share_one_implementation():
  from envs import grid_common, random_grid, tabular
  for cls in (tabular.TabularGrid, random_grid.RandomGrid):
    assert issubclass(cls, grid_common.GridWorld)
    assert "step" not in vars(cls) and "step_env" not in vars(cls)
  assert tabular.TabularConfig is random_grid.RandomGridConfig is grid_common.GridConfig
