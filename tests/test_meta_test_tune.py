"""``lpg-report --tune`` (issue 14): values tried per (env, algo) on tuning seeds, the best
kept by final return, the reported figures from fresh seeds, the table naming the values."""
import json
import math
import os
import sys

import numpy as np
import pandas as pd
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


def test_lr_scale_multiplies_each_kinds_own_step_size():
  """One grid for a suite mixing tabular SGD and network Adam agents."""
  own = {env: make_plan(env, "a2c", 10_000, 1, "/x").run.learning_rate
         for env in ("chain/short", "CartPole")}
  tab = make_plan("chain/short", "a2c", 10_000, 1, "/x", overrides={"lr_scale": 0.25})
  net = make_plan("CartPole", "a2c", 10_000, 1, "/x", overrides={"lr_scale": 4})
  assert own["chain/short"] > 1 > own["CartPole"]        # SGD vs Adam step sizes
  assert tab.run.learning_rate == pytest.approx(0.25 * own["chain/short"])
  assert net.run.learning_rate == pytest.approx(4 * own["CartPole"])
  assert net.hyper_sources["learning_rate"] == "default x 4"
  flagged = make_plan("CartPole", "a2c", 10_000, 1, "/x", learning_rate=1e-2,
                      overrides={"lr_scale": 0.5})
  assert flagged.run.learning_rate == pytest.approx(5e-3)
  with pytest.raises(UserError, match="lr_scale must be a positive"):
    make_plan("CartPole", "a2c", 10_000, 1, "/x", overrides={"lr_scale": 0})


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


def test_algos_entries_tuned_and_several_rules():
  """``+tuned`` marks the entries to tune; several rules give one lpg row each."""
  rules = [("toy", "a.pkl"), ("new", "b.pkl")]
  rows = report_lib.parse_algos("lpg,lpg+tuned,a2c+tuned,random", rules, tuning=True)
  assert [(e.label, e.algo, e.tuned, e.rule) for e in rows] == [
      ("lpg:toy", "lpg", False, "a.pkl"), ("lpg:new", "lpg", False, "b.pkl"),
      ("lpg:toy+tuned", "lpg", True, "a.pkl"), ("lpg:new+tuned", "lpg", True, "b.pkl"),
      ("a2c+tuned", "a2c", True, None), ("random", "random", False, None)]
  # lpg:LABEL is one rule's row alone; its row name stays the same.
  rows = report_lib.parse_algos("lpg,lpg:new+tuned,a2c", rules, tuning=True)
  assert [(e.label, e.tuned, e.rule) for e in rows] == [
      ("lpg:toy", False, "a.pkl"), ("lpg:new", False, "b.pkl"), ("lpg:new+tuned", True, "b.pkl"),
      ("a2c", False, None)]
  # Without +tuned entries every learning algorithm is tuned and keeps its name.
  rows = report_lib.parse_algos("lpg,a2c,random", rules[:1], tuning=True)
  assert [(e.label, e.tuned) for e in rows] == [("lpg", True), ("a2c", True), ("random", False)]
  for text, tuning, match in (("a2c+tuned", False, "needs --tune"),
                              ("random+tuned", True, "nothing to tune"),
                              ("a2c,a2c", False, "twice"), ("lpg", False, "--rule"),
                              ("lpg,lpg:toy", False, "twice"), ("lpg:old", False, "labelled"),
                              ("a2c:toy", False, "takes no rule"),
                              ("nosuch", False, "unknown")):
    with pytest.raises(UserError, match=match):
      report_lib.parse_algos(text, [] if text == "lpg" else rules, tuning)
  assert report_lib.parse_rules(["x/lpg_toy15.pkl", "new=y/r.pkl"]) == [
      ("lpg_toy15", "x/lpg_toy15.pkl"), ("new", "y/r.pkl")]
  with pytest.raises(UserError, match="twice"):
    report_lib.parse_rules(["a/r.pkl", "b/r.pkl"])
  assert report_lib.strongest_role([{"e": "validation"}, {"e": "train"}, {}], "e") == "train"
  assert report_lib.strongest_role([{}, {}], "e") == "test"


def test_report_two_rules_tuned_rows_and_roles(tmp_path):
  """One report: two rules (one validated on the env), A2C tuned, random; the table's
  ratio uses the tuned A2C, each rule's row its own role."""
  from tiny_rule import save_tiny_rule
  a = save_tiny_rule(tmp_path / "a.pkl", envs=["chain/long"])
  b = save_tiny_rule(tmp_path / "b.pkl", seed=1, validate_envs=["chain/short"])
  out = str(tmp_path / "rep")
  assert report_lib.main(["--rule", f"toy={a}", "--rule", b, "--suite", "chain/short",
                          "--algos", "lpg,a2c+tuned,random", "--steps", "3200", "--seeds", "1",
                          "--num-envs", "8", "--rollout-len", "20", "--tune", "lr_scale=0.5,1",
                          "--tune-seeds", "1", "--quiet", "--out", out]) == 0
  df = pd.read_csv(os.path.join(out, "report.csv")).set_index("algo")
  assert sorted(df.index) == ["a2c+tuned", "lpg:b", "lpg:toy", "random"]
  assert df.loc["lpg:toy", "role"] == "test" and df.loc["lpg:b", "role"] == "validation"
  assert df.loc["random", "role"] == "validation"        # the strongest role of any rule
  assert df.loc["a2c+tuned", "tuned"].startswith("lr_scale=")
  assert df.loc["a2c+tuned", "ratio_to_a2c"] == pytest.approx(1.0)
  assert os.path.isdir(os.path.join(out, "runs", "chain_short", "lpg_toy"))
  assert not os.path.exists(os.path.join(out, "runs", "chain_short", "random", "tune"))


def test_table_ratio_only_for_positive_a2c_returns():
  """Acrobot-like negative returns: no ratio (it would rank -500 above -91), the
  random-relative score still; the tuned A2C row is the reference."""
  rows = [dict(env="Acrobot", algo=a, final_return_mean=r, final_return_std=0.0)
          for a, r in (("a2c", -150.0), ("a2c+tuned", -91.0), ("lpg", -500.0),
                       ("random", -499.0))]
  df = report_lib.build_table(rows).set_index("algo")
  assert df["ratio_to_a2c"].isna().all()
  assert df.loc["lpg", "a2c_relative"] == pytest.approx(-1 / 408)
  assert df.loc["a2c+tuned", "a2c_relative"] == pytest.approx(1.0)


def test_summary_medians_over_all_and_test_envs():
  """Hand-computed: lpg is 2x, 0.5x, 0.25x A2C on three envs (one validation); medians over
  all envs and over the test envs alone; NaN ratios (negative returns) are left out."""
  rows = []
  for env, role, a2c, lpg in (("A", "test", 10.0, 20.0), ("B", "validation", 10.0, 5.0),
                              ("C", "test", 8.0, 2.0), ("D", "test", -91.0, -500.0)):
    rows += [dict(env=env, role=role, algo="a2c", final_return_mean=a2c, final_return_std=0.0),
             dict(env=env, role=role, algo="lpg", final_return_mean=lpg, final_return_std=0.0),
             dict(env=env, role=role, algo="random", final_return_mean=0.0, final_return_std=0.0)]
  summary = report_lib.summarise(report_lib.build_table(rows)).set_index("algo")
  assert summary.loc["lpg", "envs"] == 4 and summary.loc["lpg", "test_envs"] == 3
  assert summary.loc["lpg", "median_ratio_to_a2c"] == pytest.approx(0.5)      # 2, 0.5, 0.25
  assert summary.loc["lpg", "test_median_ratio_to_a2c"] == pytest.approx(1.125)  # 2, 0.25
  # a2c_relative (random at 0): 2, 0.5, 0.25 and D's -500 / -91 = 5.49 -> (0.5 + 2) / 2
  assert summary.loc["lpg", "median_a2c_relative"] == pytest.approx(1.25)
  assert summary.loc["a2c", "test_median_a2c_relative"] == pytest.approx(1.0)


def test_single_thread_flags_keep_the_users_own():
  from meta_test.workers import single_thread_flags
  assert single_thread_flags("") == "--xla_cpu_multi_thread_eigen=false"
  mine = "--a=1 --xla_cpu_multi_thread_eigen=true"
  assert single_thread_flags(mine) == mine                     # the user's setting kept
  assert single_thread_flags("--a=1") == "--a=1 --xla_cpu_multi_thread_eigen=false"
  assert all(f.startswith("--") for f in single_thread_flags("").split())


def test_report_jobs_runs_side_by_side_and_gives_the_same_report(tmp_path):
  """``--jobs 2``: tuning runs and reported runs in two single-threaded worker processes;
  the same tuned values and returns as one process, the manifest in --algos order (the
  tuned row finishes last)."""
  argv = ["--suite", "chain/short", "--algos", "random,a2c+tuned", "--steps", "3200",
          "--seeds", "2", "--num-envs", "8", "--rollout-len", "20", "--tune", "lr=1e-9,40",
          "--tune-seeds", "1", "--quiet"]
  tables = {}
  for jobs in (1, 2):
    out = str(tmp_path / f"jobs{jobs}")
    assert report_lib.main([*argv, "--jobs", str(jobs), "--out", out]) == 0
    tables[jobs] = pd.read_csv(os.path.join(out, "report.csv"))
    labels = [e["dir"] for e in json.load(open(os.path.join(out, "runs.json")))]
    assert labels == [os.path.join("runs", "chain_short", a) for a in ("random", "a2c+tuned")]
  one, two = tables[1], tables[2]
  assert list(one["tuned"].fillna("")) == list(two["tuned"].fillna(""))
  assert "lr=40" in list(two["tuned"])
  np.testing.assert_allclose(one["final_return_mean"], two["final_return_mean"], rtol=1e-4,
                             atol=1e-4)


def test_table_only_reports_the_finished_rows_and_runs_nothing(tmp_path, capsys, monkeypatch):
  """``--table-only``: the rows whose runs are finished (a tuned row: with the value its
  tuning runs chose), the others named and left out; no run is started."""
  out = str(tmp_path / "r")
  argv = ["--suite", "chain/short", "--steps", "3200", "--seeds", "2", "--num-envs", "8",
          "--rollout-len", "20", "--tune", "lr=1e-9,40", "--tune-seeds", "1", "--quiet",
          "--out", out]
  assert report_lib.main([*argv, "--algos", "random,a2c+tuned"]) == 0
  before = pd.read_csv(os.path.join(out, "report.csv"))
  capsys.readouterr()

  def no_run(*a, **k):
    raise AssertionError("--table-only started a run")
  monkeypatch.setattr(report_lib, "execute", no_run)
  assert report_lib.main([*argv, "--algos", "random,a2c+tuned,ppo+tuned", "--table-only"]) == 0
  after = pd.read_csv(os.path.join(out, "report.csv"))
  pd.testing.assert_frame_equal(before, after)
  assert "1 of 3 rows not finished, left out: chain/short ppo+tuned" in capsys.readouterr().err
  assert "Left out, not finished when this table was made: chain/short ppo+tuned." in open(
      os.path.join(out, "report.md")).read()
  for extra, match in ((["--overwrite"], "exclude"), ([], "has none")):
    empty = [] if extra else ["--out", str(tmp_path / "empty")]
    with pytest.raises(UserError, match=match):
      report_lib.check_out(report_lib.build_parser().parse_args(
          [*argv, *empty, "--table-only", *extra]))


def test_tuned_row_choosing_another_rows_settings_copies_its_run(tmp_path, capsys, monkeypatch):
  """``a2c,a2c+tuned`` where tuning chooses lr_scale=1: the tuned row's reported run would be
  the plain row's run again, so that finished run is copied instead of rerun."""
  from meta_test import run as run_lib
  ran = []
  real = report_lib.execute

  def counting(plan, **kw):
    ran.append(plan.out)
    return real(plan, **kw)
  monkeypatch.setattr(report_lib, "execute", counting)
  out = str(tmp_path / "r")
  assert report_lib.main(["--suite", "chain/short", "--steps", "3200", "--seeds", "2",
                          "--num-envs", "8", "--rollout-len", "20", "--tune", "lr_scale=1",
                          "--tune-seeds", "1", "--quiet", "--algos", "a2c,a2c+tuned",
                          "--out", out]) == 0
  assert "its finished run copied" in capsys.readouterr().err
  plain, tuned = (os.path.join(out, "runs", "chain_short", a) for a in ("a2c", "a2c+tuned"))
  assert ran == [plain, os.path.join(tuned, "tune", "lr_scale=1")]   # no third run
  a, b = (json.load(open(os.path.join(d, "summary.json"))) for d in (plain, tuned))
  assert a["settings_key"] == b["settings_key"] and b["tuned"] == {"lr_scale": 1}
  assert a["final_return_mean"] == b["final_return_mean"]
  assert os.path.exists(os.path.join(tuned, "curves.csv"))


def test_run_jobs_finishes_rows_in_order(monkeypatch):
  """Runs go in row order; a tuned row's reported run goes before every later run as soon as
  its tuning runs are in, made with the best value (ties: the first in grid order)."""
  from types import SimpleNamespace as NS
  calls = []

  def fake_run_task(argv, index, tuning, chosen, progress):
    calls.append((index, tuning, chosen))
    return {"final_return_mean": {None: 5.0, 0: 1.0, 1: 3.0}[tuning]}
  monkeypatch.setattr(report_lib, "run_task", fake_run_task)
  job = lambda name, tuning: NS(plan=NS(source=NS(name=name)), entry=NS(label=name),
                                tuning=tuning)
  jobs = [job("a", [({"lr": 1}, None), ({"lr": 2}, None)]), job("b", []),
          job("c", [({"lr": 1}, None), ({"lr": 2}, None)])]
  out = report_lib.run_jobs((), jobs, 1, False)
  assert calls == [(0, 0, None), (0, 1, None), (0, None, {"lr": 2}), (1, None, None),
                   (2, 0, None), (2, 1, None), (2, None, {"lr": 2})]
  assert [c for _, c in out] == [{"lr": 2}, None, {"lr": 2}]


def test_entropy_bonus_wraps_the_rule_and_enters_the_settings_only_when_set(tmp_path):
  """``entropy_bonus`` (flag or ``--tune``): the learned rule is wrapped, the value recorded;
  at 0 the plan and its settings key are those of a run without the option."""
  from tiny_rule import save_tiny_rule
  from lpg.rule import EntropyBonus
  rule = save_tiny_rule(tmp_path / "r.pkl", envs=["chain/long"])
  plain = make_plan("chain/short", "lpg", 3200, 1, "/x", rule_path=str(rule))
  zero = make_plan("chain/short", "lpg", 3200, 1, "/x", rule_path=str(rule), entropy_bonus=0.0)
  tuned = make_plan("chain/short", "lpg", 3200, 1, "/x", rule_path=str(rule),
                    overrides={"entropy_bonus": 0.02})
  assert zero.settings_key() == plain.settings_key()
  assert "entropy_bonus" not in plain.settings()["hyperparameters"]
  assert not isinstance(plain.choice.rule, EntropyBonus)
  assert isinstance(tuned.choice.rule, EntropyBonus) and tuned.choice.rule.coef == 0.02
  assert tuned.settings()["hyperparameters"]["entropy_bonus"] == 0.02
  with pytest.raises(UserError, match="learned rules"):
    make_plan("chain/short", "a2c", 3200, 1, "/x", overrides={"entropy_bonus": 0.01})


def _sleeper(seconds):
  """A worker task: says it runs (the worker is set up), then sleeps."""
  import time
  print("ready", os.getpid(), flush=True)
  time.sleep(seconds)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("when", ["running", "starting"])
def test_workers_die_with_a_killed_parent(tmp_path, when):
  """A killed ``lpg-report`` leaves no worker running, whether its workers were running a
  task or still starting when it died."""
  import signal
  import subprocess
  import time
  script = tmp_path / "parent.py"
  script.write_text(
      "import sys, time\n"
      "from meta_test import workers\n"
      "from test_meta_test_tune import _sleeper\n"
      "if __name__ == '__main__':\n"
      "  ex = workers.pool(2)\n"
      "  fs = [ex.submit(_sleeper, 600) for _ in range(2)]\n"
      "  print('pids', *ex._processes, flush=True)\n"
      "  time.sleep(600)\n")
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
  parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(here), env=env)
  pids = [int(p) for p in parent.stdout.readline().split()[1:]]
  assert len(pids) == 2
  if when == "running":
    ready = [parent.stdout.readline() for _ in pids]
    assert all(line.startswith("ready") for line in ready)
  parent.send_signal(signal.SIGKILL)
  parent.wait()
  deadline = time.time() + 60
  alive = pids
  while alive and time.time() < deadline:
    time.sleep(0.2)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
             open(f"/proc/{p}/stat").read().split()[2] != "Z"]
  assert not alive, f"workers {alive} outlived their parent"
