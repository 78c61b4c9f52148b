"""``lpg-report --tune`` (issue 14): values tried per (env, algo) on tuning seeds, the best
kept by final return, the reported figures from fresh seeds, the table naming the values."""
import json
import math
import os

import pytest

from lpg.cli import UserError
from meta_test import report as report_lib
from meta_test import tune as tune_lib
from meta_test.plan import make_plan


def test_parse_grid_and_best():
  tune = tune_lib.parse_tune(["lr=3e-4,1e-3", "entropy-coef=0,0.05", "normalize_advantages=true"])
  assert tune == {"lr": [3e-4, 1e-3], "entropy_coef": [0, 0.05], "normalize_advantages": [True]}
  assert len(tune_lib.grid(tune)) == 4 and tune_lib.grid({}) == [{}]
  assert tune_lib.best([({"lr": 1}, 0.5), ({"lr": 2}, math.nan), ({"lr": 3}, 0.7),
                        ({"lr": 4}, None)]) == {"lr": 3}
  for bad in (["lr"], ["lr="], ["=1"], ["lr=x"], ["lr=inf"], ["lr=1", "lr=2"]):
    with pytest.raises(UserError, match="--tune"):
      tune_lib.parse_tune(bad)


def test_overrides_reach_the_algorithm_settings():
  plan = make_plan("CartPole", "a2c", 1_000_000, 1, "/x", overrides={"lr": 1e-2,
                                                                     "entropy_coef": 0.05})
  assert plan.run.learning_rate == 1e-2 and plan.choice.rule.config.entropy_coef == 0.05
  with pytest.raises(UserError, match="no setting 'nosuch'.*entropy_coef"):
    make_plan("CartPole", "a2c", 1000, 1, "/x", overrides={"nosuch": 1})


def test_report_tune_picks_the_best_value_and_reports_fresh_seeds(tmp_path, capsys):
  """Rigged: lr 1e-9 cannot learn chain/short in 6400 steps, lr 40 does."""
  out = str(tmp_path / "rep")
  assert report_lib.main(["--suite", "chain/short", "--algos", "a2c", "--steps", "6400",
                          "--seeds", "2", "--num-envs", "16", "--rollout-len", "20",
                          "--tune", "lr=1e-9,40", "--tune-seeds", "1", "--quiet",
                          "--out", out]) == 0
  run = os.path.join(out, "runs", "chain_short", "a2c")
  s = json.load(open(os.path.join(run, "summary.json")))
  assert s["tuned"] == {"lr": 40} and s["hyperparameters"]["learning_rate"] == 40
  assert s["hyperparameters"]["seed"] == 0 and s["seeds"] == 2      # fresh seeds
  for lr, learned in (("1e-09", False), ("40", True)):
    t = json.load(open(os.path.join(run, "tune", f"lr={lr}", "summary.json")))
    assert t["hyperparameters"]["seed"] == tune_lib.TUNE_SEED and t["seeds"] == 1
    assert (t["final_return_mean"] > 0.5) == learned
  assert "lr=40" in open(os.path.join(out, "report.md")).read()
  assert "tuned" in capsys.readouterr().out
