"""Same seeds, same returns: tiny lpg, a2c, mgrl and host-loop runs against values pinned
on main before the meta-test refactor (issue 12), through the public plan/run API.

Pinned with ``make_plan(env, algo, steps, 2, out, rule_path=<LPGConfig(hidden=16, y_dim=8)
rule from PRNGKey(0)>, num_envs=B, rollout_len=T, seed=3)`` and ``train_plan``; float32
sums and losses are compared exactly (the refactor must not change a single operation).
"""
import numpy as np
import pytest

from meta_test.plan import make_plan
from meta_test.results import final_returns
from meta_test.run import train_plan
from tiny_rule import save_tiny_rule

# env, algo, steps, B, T -> final return per seed, return sum per seed, last loss per seed
PINNED = {
    ("chain/short", "lpg", 6400, 16, 20): ([0.0, 0.0], [14.0, 14.0],
                                           [0.090514175593853, 0.0890149176120758]),
    ("chain/short", "a2c", 6400, 16, 20): ([0.875, 1.0], [112.0, 96.0],
                                           [-0.015315096825361252, -0.018199529498815536]),
    ("chain/short", "mgrl", 6400, 16, 20): ([0.875, 1.0], [112.0, 98.0],
                                            [-0.015389645472168922, -0.018275458365678787]),
    ("meta_test.examples:chain_short", "a2c", 400, 4, 10): (
        [1.0, -1.0], [4.0, 3.0], [0.7391092777252197, -0.06800145655870438]),
}


@pytest.fixture(scope="module")
def rule_path(tmp_path_factory):
  return save_tiny_rule(tmp_path_factory.mktemp("rule") / "rule.pkl")


@pytest.mark.parametrize("case", list(PINNED), ids=lambda c: f"{c[0]}-{c[1]}")
def test_same_seeds_same_returns(rule_path, case):
  env, algo, steps, b, t = case
  plan = make_plan(env, algo, steps, 2, "/nonexistent-out", rule_path=rule_path, num_envs=b,
                   rollout_len=t, seed=3)
  result = train_plan(plan, progress=False)
  final, _ = final_returns(result)
  want_final, want_sum, want_loss = PINNED[case]
  np.testing.assert_array_equal(final, np.float32(want_final))
  np.testing.assert_array_equal(result.metrics.return_sum.sum(1), want_sum)
  np.testing.assert_array_equal(np.float32(result.metrics.loss[:, -1]), np.float32(want_loss))
