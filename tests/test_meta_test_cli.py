"""lpg-apply / lpg-report bad input (issue 18): every case exits 2 with exactly one line on
stderr, no traceback, and changes nothing that existed; and lpg-report's reports contain
only runs made with their own settings (--overwrite, --resume).

In-process through ``main(argv)`` (fast; all validation happens before any compilation),
plus one subprocess case per command for the real exit status and stderr.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest

from meta_test import apply as apply_lib
from meta_test import report as report_lib
from tiny_rule import save_tiny_rule

TINY = ["--num-envs", "16", "--rollout-len", "20", "--quiet"]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Rules good and bad, and the pre-existing things bad input must leave alone."""
  d = tmp_path_factory.mktemp("inputs")
  good = save_tiny_rule(d / "rule.pkl")
  data = open(good, "rb").read()

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  (d / "hostile.pkl").write_bytes(pickle.dumps(Evil()))
  (d / "truncated.pkl").write_bytes(data[:200])
  (d / "empty.pkl").write_bytes(b"")
  flipped = bytearray(data)
  flipped[len(flipped) // 2] ^= 0xFF
  (d / "flipped.pkl").write_bytes(bytes(flipped))
  (d / "ruledir").mkdir()
  (d / "a_file").write_text("keep me")
  (d / "full").mkdir()
  (d / "full" / "summary.json").write_text("old")
  return {name: str(d / name) for name in ("hostile.pkl", "truncated.pkl", "empty.pkl",
                                           "flipped.pkl", "ruledir", "a_file", "full")} | {
      "rule": good, "missing": str(d / "nope.pkl"), "root": str(d)}


def _snapshot(root):
  """Every path under ``root`` with a digest of its content."""
  out = {}
  for dirpath, dirs, names in os.walk(root):
    for n in dirs:
      out[os.path.join(dirpath, n)] = "dir"
    for n in names:
      p = os.path.join(dirpath, n)
      out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def _fill(argv, files, out):
  return [files.get(a[1:], a) if a.startswith("@") else a for a in argv] + (
      [] if "--out" in argv else ["--out", out])


def _expect_one_line_error(capsys, main, prog, argv, needles, files):
  before = _snapshot(files["root"])
  rc = main(argv)
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert rc == 2, err
  assert len(lines) == 1, err
  assert lines[0].startswith(f"{prog}: error: "), err
  assert "Traceback" not in err
  for n in needles:
    assert n in lines[0], err
  assert _snapshot(files["root"]) == before     # nothing pre-existing changed, nothing added
  return lines[0]


# ----------------------------------------------------------------- lpg-apply
A2C = ["--algo", "a2c"]
APPLY_CASES = {
    "hidden not widths": (["--env", "CartPole", "--algo", "a2c", "--hidden", "64,,64"],
                          ["--hidden"]),
    "unknown env": (["--env", "chain/shrt"] + A2C, ["unknown environment", "chain/short"]),
    "unknown algo": (["--env", "chain/short", "--algo", "a2cc"], ["--algo", "'a2c'"]),
    "entropy bonus for a2c": (["--env", "chain/short", "--entropy-bonus", "0.01"] + A2C,
                              ["--entropy-bonus", "entropy_coef"]),
    "entropy bonus negative": (["--env", "chain/short", "--entropy-bonus", "-1"] + A2C,
                               ["--entropy-bonus"]),
    "steps 0": (["--env", "chain/short", "--steps", "0"] + A2C, ["--steps"]),
    "steps -5": (["--env", "chain/short", "--steps", "-5"] + A2C, ["--steps"]),
    "steps ten": (["--env", "chain/short", "--steps", "ten"] + A2C, ["--steps"]),
    "steps 1.5": (["--env", "chain/short", "--steps", "1.5"] + A2C, ["--steps"]),
    "seeds 0": (["--env", "chain/short", "--seeds", "0"] + A2C, ["--seeds"]),
    "num-envs 0": (["--env", "chain/short", "--num-envs", "0"] + A2C, ["--num-envs"]),
    "rollout-len 0": (["--env", "chain/short", "--rollout-len", "0"] + A2C, ["--rollout-len"]),
    "lr inf": (["--env", "chain/short", "--lr", "inf"] + A2C, ["--lr", "finite"]),
    "lr nan": (["--env", "chain/short", "--lr", "nan"] + A2C, ["--lr", "finite"]),
    "lr 0": (["--env", "chain/short", "--lr", "0"] + A2C, ["--lr"]),
    "seed x": (["--env", "chain/short", "--seed", "x"] + A2C, ["--seed"]),
    "lpg without rule": (["--env", "chain/short", "--algo", "lpg"], ["--rule"]),
    "tabular on images": (["--env", "Breakout", "--agent", "tabular"] + A2C, ["tabular"]),
    "unknown agent": (["--env", "chain/short", "--agent", "cnn"] + A2C, ["--agent"]),
    "mgrl on host env": (["--env", "meta_test.examples:chain_short", "--algo", "mgrl"],
                         ["registered"]),
    "ppo on host env": (["--env", "meta_test.examples:chain_short", "--algo", "ppo"],
                        ["registered"]),
    "rule missing": (["--env", "chain/short", "--rule", "@missing"], ["does not exist"]),
    "rule truncated": (["--env", "chain/short", "--rule", "@truncated.pkl"], ["truncated"]),
    "rule hostile": (["--env", "chain/short", "--rule", "@hostile.pkl"], ["refus"]),
    "rule empty": (["--env", "chain/short", "--rule", "@empty.pkl"], ["empty.pkl"]),
    "rule flipped byte": (["--env", "chain/short", "--rule", "@flipped.pkl"], ["flipped.pkl"]),
    "rule directory": (["--env", "chain/short", "--rule", "@ruledir"], ["directory"]),
    "factory not importable": (["--env", "nosuchpkg.mod:make"] + A2C, ["cannot import"]),
    "factory not an env": (["--env", "meta_test.examples:not_an_env"] + A2C, ["dm_env"]),
    "factory missing attr": (["--env", "meta_test.examples:nosuch"] + A2C, ["no callable"]),
    "factory needs args": (["--env", "json:loads"] + A2C, ["factory failed", "TypeError"]),
    "factory needs args 2": (["--env", "os.path:join"] + A2C, ["factory failed", "TypeError"]),
    "factory raises": (["--env", "meta_test.examples:raising"] + A2C,
                       ["factory failed", "RuntimeError", "always fails", "--debug"]),
    "out is a file": (["--env", "chain/short", "--out", "@a_file"] + A2C, ["is a file"]),
    "out under a file": (["--env", "chain/short", "--out", "@a_file/sub"] + A2C, ["is a file"]),
    "out not empty": (["--env", "chain/short", "--out", "@full"] + A2C, ["--overwrite"]),
    "out unwritable": (["--env", "chain/short", "--out", "/proc/self/lpg-out"] + A2C,
                       ["not writable"]),
}


def test_apply_atari_missing_extra(capsys, files, monkeypatch):
  monkeypatch.setitem(sys.modules, "ale_py", None)  # as if ale-py were not installed
  _expect_one_line_error(capsys, apply_lib.main, "lpg-apply",
                         ["--env", "atari/Breakout", "--algo", "a2c", "--out",
                          os.path.join(files["root"], "o")], ['pip install -e ".[atari]"'], files)


def test_apply_debug_shows_the_factory_traceback(capsys, files):
  rc = apply_lib.main(["--env", "meta_test.examples:raising", "--algo", "a2c", "--debug",
                       "--out", os.path.join(files["root"], "dbg")])
  err = capsys.readouterr().err
  assert rc == 2 and "Traceback" in err and "examples.py" in err
  assert err.strip().splitlines()[-1].startswith("lpg-apply: error: --env")


def test_counts_accept_scientific_notation():
  args = apply_lib.build_parser().parse_args(["--env", "x", "--steps", "1e6", "--seeds", "2e0"])
  assert args.steps == 1_000_000 and args.seeds == 2
  args = report_lib.build_parser().parse_args(["--out", "x", "--steps", "1e6"])
  assert args.steps == 1_000_000


def test_summary_is_strict_json(tmp_path):
  """No episode ends (1 CartPole step): NaN returns are written as null."""
  out = str(tmp_path / "o")
  assert apply_lib.main(["--env", "CartPole", "--algo", "a2c", "--steps", "1", "--seeds", "1",
                         "--num-envs", "1", "--rollout-len", "1", "--quiet", "--out", out]) == 0
  text = open(os.path.join(out, "summary.json")).read()
  s = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
  assert s["final_return_mean"] is None and s["final_return_per_seed"] == [None]


# ---------------------------------------------------------------- lpg-report
REPORT_CASES = {
    "suite typo": (["--suite", "chain/short,tabluar/dense", "--algos", "a2c"], ["tabular/dense"]),
    "suite unknown lists suites": (["--suite", "nosuch", "--algos", "a2c"],
                                   ["suites:", "minatar", "train"]),
    "suite empty": (["--suite", ",", "--algos", "a2c"], ["--suite"]),
    "suite factory raises": (["--suite", "meta_test.examples:raising", "--algos", "a2c"],
                             ["factory failed", "RuntimeError"]),
    "algos unknown": (["--suite", "chain/short", "--algos", "a2c,ppo2"], ["--algos", "ppo2"]),
    "algos typo": (["--suite", "chain/short", "--algos", "a2c,randm"], ["'random'"]),
    "algos empty": (["--suite", "chain/short", "--algos", ","], ["--algos"]),
    "seeds -1": (["--suite", "chain/short", "--algos", "a2c", "--seeds", "-1"], ["--seeds"]),
    "steps 0": (["--suite", "chain/short", "--algos", "a2c", "--steps", "0"], ["--steps"]),
    "lpg without rule": (["--suite", "chain/short", "--algos", "lpg,a2c"], ["--rule"]),
    "rule hostile": (["--rule", "@hostile.pkl", "--suite", "chain/short"], ["refus"]),
    "rule truncated": (["--rule", "@truncated.pkl", "--suite", "chain/short"], ["truncated"]),
    "rule missing": (["--rule", "@missing", "--suite", "chain/short"], ["does not exist"]),
    "rule empty": (["--rule", "@empty.pkl", "--suite", "chain/short"], ["empty.pkl"]),
    "rule directory": (["--rule", "@ruledir", "--suite", "chain/short"], ["directory"]),
    "out is a file": (["--suite", "chain/short", "--algos", "a2c", "--out", "@a_file"],
                      ["is a file"]),
    "out not empty": (["--suite", "chain/short", "--algos", "a2c", "--out", "@full"],
                      ["--resume"]),
    "resume and overwrite": (["--suite", "chain/short", "--algos", "a2c", "--resume",
                              "--overwrite", "--out", "@full"], ["--overwrite"]),
    "out unwritable": (["--suite", "chain/short", "--algos", "a2c", "--out",
                        "/proc/self/lpg-out"], ["not writable"]),
}


MATRIX = ([("lpg-apply", name) for name in APPLY_CASES]
          + [("lpg-report", name) for name in REPORT_CASES])


@pytest.mark.parametrize("prog,case", MATRIX, ids=[f"{p}: {c}" for p, c in MATRIX])
def test_bad_input(capsys, files, prog, case):
  main, cases = ((apply_lib.main, APPLY_CASES) if prog == "lpg-apply"
                 else (report_lib.main, REPORT_CASES))
  argv, needles = cases[case]
  argv = [files["a_file"] + "/sub" if a == "@a_file/sub" else a for a in argv]
  out = os.path.join(files["root"], "new-out")
  _expect_one_line_error(capsys, main, prog, _fill(argv, files, out) + TINY, needles, files)


@pytest.mark.parametrize("prog,argv,needle", [
    ("meta_test.apply", ["--env", "json:loads", "--algo", "a2c"], "factory failed"),
    ("meta_test.report", ["--suite", "meta_test.examples:raising", "--algos", "a2c"],
     "factory failed"),
])
def test_cli_subprocess_one_line(tmp_path, prog, argv, needle):
  """The real process: exit status 2, exactly one stderr line, nothing on stdout."""
  proc = subprocess.run([sys.executable, "-m", prog] + argv + ["--out", str(tmp_path / "o")],
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], proc.stderr
  assert proc.stdout == "" and not os.path.exists(tmp_path / "o")


# ------------------------------------------- a report holds only its own runs
def _report(out, suite, *extra, rule=None, steps="640"):
  argv = ["--suite", suite, "--algos", "a2c" if rule is None else "lpg,a2c", "--steps", steps,
          "--seeds", "1", "--out", out, *extra] + TINY
  return report_lib.main(argv + (["--rule", rule] if rule else []))


def test_report_overwrite_drops_earlier_runs(tmp_path):
  out = str(tmp_path / "rep")
  assert _report(out, "chain/short") == 0
  assert _report(out, "chain/long", "--overwrite") == 0
  df = pd.read_csv(os.path.join(out, "report.csv"))
  assert list(df["env"]) == ["chain/long"]
  assert not os.path.exists(report_lib.run_dir(out, "chain/short", "a2c"))


def test_report_resume_reruns_changed_settings(tmp_path, files, capsys):
  out = str(tmp_path / "rep")
  assert _report(out, "chain/short", rule=files["rule"]) == 0
  capsys.readouterr()
  # Same settings: both reused.
  assert _report(out, "chain/short", "--resume", rule=files["rule"]) == 0
  assert capsys.readouterr().err.count("reused") == 2
  # Other steps: both rerun, and the report shows the new steps only.
  assert _report(out, "chain/short", "--resume", rule=files["rule"], steps="960") == 0
  assert capsys.readouterr().err.count("other settings") == 2
  assert set(pd.read_csv(os.path.join(out, "report.csv"))["steps"]) == {960}
  # Another rule: lpg reruns, a2c (which does not use it) is reused.
  other = save_tiny_rule(tmp_path / "other.pkl", seed=1)
  assert _report(out, "chain/short", "--resume", rule=other, steps="960") == 0
  err = capsys.readouterr().err
  assert "lpg: made with other settings" in err and "a2c: done already, reused" in err
  s = json.load(open(os.path.join(report_lib.run_dir(out, "chain/short", "lpg"), "summary.json")))
  assert os.path.samefile(s["rule"]["path"], other)


def test_agent_widths_flag_then_default_and_the_rules_widths(tmp_path):
  """``--hidden`` wins, else the observation kind's default for every algorithm; the
  widths a rule was meta-trained with are read back from its artifact."""
  import types
  from meta_test.plan import DEFAULTS, agent_widths, make_plan, rule_widths
  rule = types.SimpleNamespace(extras={"meta_test": {"network": {"hidden": [32]}}})
  assert rule_widths(rule) == [32]
  assert agent_widths("vector", None) == (DEFAULTS["vector"].hidden, "default")
  assert agent_widths("vector", (8, 8)) == ((8, 8), "flag")
  assert agent_widths("image", None) == (DEFAULTS["image"].hidden, "default")
  bad = types.SimpleNamespace(extras={"meta_test": {"network": {"hidden": ["x"]}}})
  assert rule_widths(bad) is None and rule_widths(None) is None
  plan = make_plan("CartPole", "a2c", 1000, 1, str(tmp_path / "a"), hidden=(16, 8))
  assert plan.run.agent.hidden == (16, 8) and plan.hyper_sources["hidden"] == "flag"
