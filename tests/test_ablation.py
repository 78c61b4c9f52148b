"""``lpg-ablation``: a tiny campaign runs, is skipped when done and continued when its budget
grows or a run was killed; a variant with a flag lpg-meta-train lacks fails alone; the
report's table is exact on hand-made metrics."""
import dataclasses
import json
import os
import sys

import pytest

from meta_train import ablation, ablation_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["run", "--scale", "tiny", "--seeds", "0", "--jobs", "2"]


@pytest.fixture
def on_path(monkeypatch):
  """Runs started by the runner import this checkout."""
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def _lines(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def test_tiny_campaign_runs_skips_and_continues(tmp_path, capsys, monkeypatch, on_path):
  out = str(tmp_path / "abl")
  args = TINY + ["--variants", "base", "--out", out]   # one real run (the rest: fake trainer)
  assert ablation.main(args + ["--budget-s", "1"]) == 0
  for name in ("base-s0",):
    lines = _lines(os.path.join(out, name, "metrics.jsonl"))
    # the time limit stops each run after its first call, validated where it stops
    assert "validation" in lines[-1] and lines[-1]["meta_update"] == lines[-2]["meta_update"]
    assert set(lines[-1]["validation"]) == {"chain/long"}
  capsys.readouterr()

  def no_start(*a):
    raise AssertionError("a done run was started again")
  with monkeypatch.context() as m:
    m.setattr(ablation, "_start", no_start)
    assert ablation.main(args + ["--budget-s", "1"]) == 0
  assert capsys.readouterr().err.count("skipped, done") == 1

  assert ablation.main(args + ["--budget-s", "600"]) == 0  # more budget: it continues
  for name in ("base-s0",):
    with open(os.path.join(out, name, "config.json")) as f:
      history = json.load(f)["history"]
    assert len(history) == 2 and "--resume --time-limit" in history[1]["command"]
    assert _lines(os.path.join(out, name, "metrics.jsonl"))[-1]["meta_update"] == 4  # tiny's end
  # rescore: both rules of the run on one common validation, reproducibly.
  from meta_train import ablation_rescore
  capsys.readouterr()
  md = str(tmp_path / "rescore.md")
  assert ablation.main(["rescore", "--out", out, "--validate-seeds", "1", "--which", "both",
                        "--md", md, "--json", str(tmp_path / "r.json")]) == 0
  rows = json.load(open(tmp_path / "r.json"))
  assert [(r["variant"], r["seed"], r["rule"]) for r in rows] == [("base", 0, "best"),
                                                                  ("base", 0, "last")]
  assert all(set(r["tasks"]) == {"chain/long"} for r in rows)
  again = ablation_rescore.rescore(out, validate_seeds=1, which=("best",))
  assert again[0]["score"] == pytest.approx(rows[0]["score"])
  assert "| base | best | 1 |" in open(md).read()


def test_killed_run_is_resumed_with_the_budget_left(tmp_path, capsys, monkeypatch, on_path):
  monkeypatch.setattr(ablation, "TRAINER", (sys.executable,
                                            os.path.join(ROOT, "tests", "fake_meta_train.py")))
  out = tmp_path / "abl"
  args = ["run", "--scale", "tiny", "--variants", "base", "--seeds", "0,1", "--out", str(out),
          "--budget-s", "100"]
  assert ablation.main(args) == 1  # seed 0 was killed after 40 s
  assert "base-s0: failed (exit 137): killed" in capsys.readouterr().err
  assert ablation.main(args) == 0
  assert "base-s1: skipped, done" in capsys.readouterr().err
  calls = _lines(out / "calls.jsonl")
  assert len(calls) == 3 and calls[0][:2] == ["--preset", "tiny"]
  assert calls[2] == ["--out", str(out / "base-s0"), "--resume", "--time-limit", "60",
                      "--no-progress"]
  assert ablation.main(args) == 0 and len(_lines(out / "calls.jsonl")) == 3
  capsys.readouterr()
  # the same directories with other flags under the variant's name: refused, nothing run
  assert ablation.main(args + ["--define", "base=--lifetime-updates-min 4"]) == 1
  assert capsys.readouterr().err.count("not with this variant's flags; move it away") == 2
  assert len(_lines(out / "calls.jsonl")) == 3


def test_dry_run_and_a_variant_with_an_unknown_flag(tmp_path, capsys):
  out = tmp_path / "abl"
  args = ["run", "--scale", "tiny", "--variants", "base,warp", "--out", str(out),
          "--define", "warp=--warp-drive 9 --envs {worlds},chain/long_noisy"]
  assert ablation.main(args + ["--dry-run"]) == 0
  text = capsys.readouterr().out.splitlines()
  assert text[0] == "# base-s0: new"
  assert text[1] == (f"nice -n 10 lpg-meta-train --preset tiny --envs chain/short --seed 0 "
                     f"--validate-envs chain/long --validate-every 1 --validate-updates 8 "
                     f"--validate-seeds 1 --time-limit 5 --out {out}/base-s0 --no-progress")
  assert text[2] == ("# warp-s0: failed: lpg-meta-train does not know --warp-drive (not in this "
                     "checkout yet); update it, or drop the variant")
  assert "--envs chain/short,chain/long_noisy" in text[3] and "--warp-drive 9" in text[3]
  assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["run", "--variants", "nope"], "--variants: unknown nope"),
    (["run", "--scale", "huge"], "invalid choice: 'huge'"),
    (["run", "--seeds", ","], "is an empty list"),
    (["run", "--define", "x=value-without-flag"], "is not a --flag"),
    (["run", "--budget-s", "-1"], "must be > 0"),
])
def test_bad_input_is_one_line(args, message, capsys):
  assert ablation.main(args + ["--dry-run"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("lpg-ablation: error: ") and message in err and err.count("\n") == 1


def _write_run(out, name, validations, last_train):
  os.makedirs(out / name)
  with open(out / name / "metrics.jsonl", "w") as f:
    for mu, steps, wall, t1, t2, mean in validations:
      f.write(json.dumps({"meta_update": mu, "wall_time_s": wall - 2, "agent_steps": steps,
                          "envs": {}}) + "\n")
      f.write(json.dumps({"meta_update": mu, "agent_steps": steps, "wall_time_s": wall,
                          "validation": {"T1": {"score": t1}, "T2": {"score": t2}},
                          "validation_score": mean}) + "\n")
    if last_train:
      f.write(json.dumps(dict(zip(("meta_update", "agent_steps", "wall_time_s"), last_train)))
              + "\n")


def test_report_table_from_hand_made_metrics(tmp_path, capsys):
  out = tmp_path / "abl"
  _write_run(out, "a-s0", [(5, 100, 12, 0.2, 0.4, 0.3), (10, 200, 22, 0.6, 0.2, 0.4)], None)
  _write_run(out, "a-s1", [(5, 100, 14, 0.4, 0.8, 0.6), (8, 160, 18, 0.2, 0.4, 0.3)], None)
  _write_run(out, "base-s0", [(4, 1000, 30, 0.1, 0.3, 0.2)], (6, 1500, 31))
  os.makedirs(out / "logs")
  md, png = tmp_path / "t" / "table.md", tmp_path / "t" / "curves.png"
  assert ablation.main(["report", "--out", str(out), "--md", str(md), "--png", str(png)]) == 0
  text = md.read_text()
  assert text == capsys.readouterr().out
  assert ("| base | 1 | 0.200 | 0.200 | 0.200 | - | 0.200 | 0.000 | no | 1,500 | 31 | 6 |\n"
          "| a | 2 | 0.450 ± 0.212 | 0.350 ± 0.071 | 0.400 ± 0.071 | 0.150 | 0.500 ± 0.141 "
          "| 0.150 ± 0.212 | yes | 180 | 20 | 9 |" in text)  # base first; end (mean of the last 3) - base paired by
  # seed: only seed 0, (0.3 + 0.4) / 2 - 0.2
  last, best = text.split("Held-out tasks at the last validation:")[1].split(
      "Held-out tasks at their best validation:")
  assert "| a | 0.400 ± 0.283 | 0.300 ± 0.141 |" in last and "| base | 0.100 | 0.300 |" in last
  assert "| a | 0.500 ± 0.141 | 0.600 ± 0.283 |" in best
  assert png.stat().st_size > 10_000
  assert ablation_report.read_runs(str(out))[0].groupby("variant").k.max().to_dict() == {
      "a": 1, "base": 0}


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_the_recipe_preset_is_the_winning_variant_at_its_scale(scale):
  from meta_train import cli
  from meta_train.config import PRESETS
  argv = ablation.train_args(ablation.SCALES[scale], ablation.VARIANTS["esnorm"], 0, "x", 900.0)
  config = cli.make_config(cli.build_parser().parse_args(argv))
  preset = PRESETS[f"recipe-{scale}"]
  # Equal but for how often it checkpoints (which changes no result).
  assert dataclasses.replace(config, checkpoint_every=preset.checkpoint_every) == (
      dataclasses.replace(preset, envs=cli.expand_envs(",".join(preset.envs))))


def test_rescore_table_pairs_variants_with_base_by_seed():
  from meta_train.ablation_rescore import table
  rows = [{"variant": v, "seed": s, "rule": "best", "score": x, "tasks": {"T": x}}
          for v, s, x in [("base", 0, 0.5), ("base", 1, 0.3), ("es", 0, 0.7), ("es", 1, 0.4)]]
  lines = table(rows).splitlines()
  assert lines[2].startswith("| base | best | 2 | 0.400 ± 0.141 | - | 0.500 / 0.300 |")
  # es - base: 0.2 and 0.1 -> 0.150 ± 0.071
  assert lines[3].startswith("| es | best | 2 | 0.550 ± 0.212 | 0.150 ± 0.071 | 0.700 / 0.400 |")


def test_runs_sharing_the_machine_get_one_xla_thread_each():
  base = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false", "HOME": "h"}
  assert ablation.run_env(base, shared=False) == base
  env = ablation.run_env(base, shared=True)
  assert env["XLA_FLAGS"].split() == ["--xla_cpu_enable_concurrency_optimized_scheduler=false",
                                      "--xla_cpu_multi_thread_eigen=false"]
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and env["HOME"] == "h"
  assert base["XLA_FLAGS"].count("--") == 1  # the caller's environment is left alone
