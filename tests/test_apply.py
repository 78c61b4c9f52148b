"""lpg-apply / lpg-report: the summary contract, A2C vs random (bad input: test_meta_test_cli).

Kept fast: tiny rules (LPGConfig(hidden=16, y_dim=8)), few envs, short runs;
compiled runs happen once in module-scoped fixtures.
"""
import json
import os

import numpy as np
import pandas as pd
import pytest

from envs import _xla_flags  # noqa: F401
from meta_test import apply as apply_lib
from meta_test import report as report_lib
from tiny_rule import save_tiny_rule

SUMMARY_KEYS = {"env", "algo", "steps", "seeds", "final_return_mean", "final_return_std", "rule",
                "wall_time_s", "steps_per_s", "agent", "hyperparameters"}
TINY = ["--num-envs", "16", "--rollout-len", "20", "--quiet"]
BUDGET = {"chain/short": 40_000, "tabular/dense": 40_000}   # one report: one --steps


@pytest.fixture(scope="module")
def rule_path(tmp_path_factory):
  # As if meta-trained on chain/short and validated on tabular/dense (the report's roles).
  return save_tiny_rule(tmp_path_factory.mktemp("rule") / "rule.pkl", envs=["chain/short"],
                        validate_envs=["tabular/dense"])


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, rule_path):
  """lpg-report over chain/short and tabular/dense with lpg, a2c, random (6 runs)."""
  out = str(tmp_path_factory.mktemp("report"))
  rc = report_lib.main(["--rule", rule_path, "--suite", ",".join(BUDGET), "--algos",
                        "lpg,a2c,random", "--steps", "40000", "--seeds", "2", "--out", out,
                        "--resume"] + TINY)
  assert rc == 0
  return out


def _summary(out, env, algo):
  with open(os.path.join(report_lib.run_dir(out, env, algo), "summary.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("env", list(BUDGET))
@pytest.mark.parametrize("algo", ["lpg", "a2c"])
def test_summary_contract(report_dir, rule_path, env, algo):
  s = _summary(report_dir, env, algo)
  assert SUMMARY_KEYS <= set(s)
  assert s["env"] == env and s["algo"] == algo and s["seeds"] == 2
  assert s["steps"] == BUDGET[env]
  assert np.isfinite(s["final_return_mean"]) and np.isfinite(s["final_return_std"])
  assert 0 < s["final_entropy"] <= np.log(9) + 1e-5
  assert s["steps_per_s"] > 0 and s["wall_time_s"] > 0
  assert s["agent"]["kind"] == "tabular"
  assert s["hyperparameters"]["optimizer"] == "sgd"
  if algo == "lpg":
    assert s["rule"]["checksum"] and os.path.samefile(s["rule"]["path"], rule_path)
  else:           # a baseline does not depend on the rule (a new rule does not rerun it)
    assert s["rule"]["path"] is None and s["rule"]["checksum"] is None
  d = report_lib.run_dir(report_dir, env, algo)
  curves = pd.read_csv(os.path.join(d, "curves.csv"))
  assert list(curves.columns[:5]) == ["step", "seed", "episode_return", "episodes", "entropy"]
  # Policy entropy lies in (0, log |A|] (a fresh tabular policy starts near log |A|).
  import envs
  assert (curves["entropy"] > 0).all()
  assert (curves["entropy"] <= np.log(envs.make(env).num_actions) + 1e-5).all()
  assert set(curves["seed"]) == {0, 1}
  assert curves["step"].max() >= BUDGET[env]
  assert os.path.getsize(os.path.join(d, "curve.png")) > 1000


@pytest.mark.parametrize("env", list(BUDGET))
def test_a2c_beats_random(report_dir, env):
  a2c = _summary(report_dir, env, "a2c")["final_return_mean"]
  rnd = _summary(report_dir, env, "random")["final_return_mean"]
  margin = {"chain/short": 0.4, "tabular/dense": 5.0}[env]
  assert a2c > rnd + margin, (a2c, rnd)


def test_report_table(report_dir):
  df = pd.read_csv(os.path.join(report_dir, "report.csv"))
  assert len(df) == 6
  assert not df.duplicated(["env", "algo"]).any()
  assert set(df["env"]) == set(BUDGET) and set(df["algo"]) == {"lpg", "a2c", "random"}
  a2c = df[df["algo"] == "a2c"]
  assert np.allclose(a2c["ratio_to_a2c"], 1.0) and np.allclose(a2c["a2c_relative"], 1.0)
  roles = dict(zip(df["env"], df["role"]))
  assert roles == {"chain/short": "train", "tabular/dense": "validation"}   # marked in the table
  md = open(os.path.join(report_dir, "report.md")).read().splitlines()
  assert md[0].startswith("| env | role | algo |") and md[2 + 6] == ""
  # The summary: one line per algo, medians over its envs (all, and test envs alone: none).
  summary = md[md.index(report_lib.SUMMARY_HEAD) + 2:]
  assert summary[0].startswith("| algo | envs | median_ratio_to_a2c | median_a2c_relative | "
                               "test_envs |") and len(summary) == 2 + 3
  assert any(line.startswith("| a2c | 2 | 1 | 1 | 0 |") for line in summary)
  for name in ("scores.png", "curves.png", "entropy.png"):
    assert os.path.getsize(os.path.join(report_dir, name)) > 1000


def test_report_resume_skips_done_runs(report_dir, rule_path, capsys):
  before = os.path.getmtime(os.path.join(report_lib.run_dir(report_dir, "chain/short", "a2c"),
                                         "summary.json"))
  rc = report_lib.main(["--rule", rule_path, "--suite", "chain/short", "--algos", "a2c,random",
                        "--steps", "40000", "--seeds", "2", "--out", report_dir, "--resume"] + TINY)
  assert rc == 0
  assert "reused" in capsys.readouterr().err
  after = os.path.getmtime(os.path.join(report_lib.run_dir(report_dir, "chain/short", "a2c"),
                                        "summary.json"))
  assert before == after


def test_apply_cli_writes_outputs(tmp_path, capsys):
  out = str(tmp_path / "run")
  rc = apply_lib.main(["--env", "chain/short", "--algo", "a2c", "--steps", "3000", "--seeds", "2",
                       "--out", out] + TINY)
  assert rc == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["env"] == "chain/short"
  s = json.load(open(os.path.join(out, "summary.json")))
  assert SUMMARY_KEYS <= set(s) and s["rule"]["path"] is None
  assert {"summary.json", "curves.csv", "curve.png"} <= set(os.listdir(out))


def test_apply_user_dm_env_host_loop(tmp_path):
  out = str(tmp_path / "host")
  rc = apply_lib.main(["--env", "meta_test.examples:chain_short", "--algo", "a2c",
                       "--steps", "400", "--seeds", "1", "--out", out, "--num-envs", "4",
                       "--rollout-len", "10", "--quiet"])
  assert rc == 0
  s = json.load(open(os.path.join(out, "summary.json")))
  assert s["compiled"] is False and s["env"] == "meta_test.examples:chain_short"
  assert s["hyperparameters"]["num_updates"] == 10


def test_task_roles_come_from_the_rules_metadata():
  from types import SimpleNamespace
  rule = SimpleNamespace(metadata={"train_config": {"envs": ["a", "b"], "validate_envs": ["c"]}})
  assert report_lib.task_roles(rule) == {"a": "train", "b": "train", "c": "validation"}
  assert report_lib.task_roles(SimpleNamespace(metadata={})) == {}
