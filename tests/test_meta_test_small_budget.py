"""The small-budget rule (issue 14): default ``B`` x ``T`` shrink so that short or host-loop
runs get enough updates (``meta_test.plan.fit_batch``), and A2C with default flags learns a
small dm_env task with 10-step episodes, written here, within 100k steps."""
import dm_env
import pytest
import numpy as np
from dm_env import specs

from meta_test.plan import MIN_UPDATES, fit_batch, make_plan


class CueTask(dm_env.Environment):
  """Each step shows a cue (one-hot of 2); reward 1 for the action equal to the cue.
  Episodes last 10 steps: random play scores 5, the best 10."""

  def __init__(self, seed: int = 0):
    self._rng = np.random.default_rng(seed)
    self._t = 0
    self._cue = 0

  def _obs(self):
    self._cue = int(self._rng.integers(2))
    return np.eye(2, dtype=np.float32)[self._cue]

  def reset(self):
    self._t = 0
    return dm_env.restart(self._obs())

  def step(self, action):
    reward = float(int(action) == self._cue)
    self._t += 1
    if self._t >= 10:
      return dm_env.termination(reward, self._obs())
    return dm_env.transition(reward, self._obs())

  def observation_spec(self):
    return specs.Array((2,), np.float32)

  def action_spec(self):
    return specs.DiscreteArray(2)


def make_task(seed: int = 0):
  return CueTask(seed)


def test_fit_batch_rule():
  assert fit_batch(10_000_000, 64, 20, host=False) == (64, 20)        # big budget: unchanged
  b, t = fit_batch(100_000, 64, 20, host=False)                        # 80 updates before
  assert (b, t) == (8, 20) and 100_000 // (b * t) >= MIN_UPDATES
  assert fit_batch(10_000, 64, 20, host=False) == (4, 5)              # as small as allowed
  assert fit_batch(10_000_000, 64, 20, host=True) == (16, 20)         # host loop: B <= 16
  assert fit_batch(100_000, 64, 20, host=False, fixed_b=True) == (64, 5)
  assert fit_batch(100_000, 64, 20, host=False, fixed_b=True, fixed_t=True) == (64, 20)


def test_plan_applies_the_rule_unless_flags_given():
  plan = make_plan("chain/short", "a2c", 100_000, 1, "/nonexistent")
  assert (plan.run.num_envs, plan.run.rollout_len) == (8, 20)
  plan = make_plan("chain/short", "a2c", 100_000, 1, "/nonexistent", num_envs=64,
                   rollout_len=20)
  assert (plan.run.num_envs, plan.run.rollout_len) == (64, 20)


@pytest.mark.slow
def test_a2c_default_flags_learn_a_small_dm_env_task():
  """Host loop, default flags, 100k steps, 1 seed: mean final return > 8 (random 5)."""
  from meta_test.results import final_returns
  from meta_test.run import train_plan
  plan = make_plan("test_meta_test_small_budget:make_task", "a2c", 100_000, 1, "/nonexistent")
  result = train_plan(plan, progress=False)
  per_seed, _ = final_returns(result)
  assert float(per_seed.mean()) > 8, per_seed
