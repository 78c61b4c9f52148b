"""Shared pieces of the lpg-meta-train tests."""
from meta_train.cli import main

TINY = ["--preset", "tiny", "--no-progress"]


def tiny_run(tmp_path_factory, updates: int, every: int, *extra: str) -> str:
  """Runs the tiny preset in-process for ``updates`` meta-updates; returns its directory."""
  out = str(tmp_path_factory.mktemp("tiny") / "run")
  assert main(TINY + ["--out", out, "--num-updates", str(updates), "--checkpoint-every",
                      str(every), *extra]) == 0
  return out


def fresh_run(tmp_path_factory, argv: list[str]) -> str:
  """Runs ``lpg-meta-train ARGV --out NEW`` in-process; returns the run directory."""
  out = str(tmp_path_factory.mktemp("run") / "run")
  assert main(list(argv) + ["--out", out]) == 0
  return out


def run_files_and_metrics(out: str, checkpoints: list[int]) -> list[dict]:
  """Checks a finished validating run's files and checkpoint steps; returns its metrics lines."""
  import json
  import os
  from meta_train import checkpoint
  for f in ("config.json", "metrics.jsonl", "rule.pkl", "rule_best.pkl"):
    assert os.path.isfile(os.path.join(out, f)), f
  assert [s for s, _ in checkpoint.list_checkpoints(out)] == checkpoints
  with open(os.path.join(out, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]
