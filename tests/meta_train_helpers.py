"""Shared pieces of the lpg-meta-train tests."""
from meta_train.cli import main

TINY = ["--preset", "tiny", "--no-progress"]


def tiny_run(tmp_path_factory, updates: int, every: int, *extra: str) -> str:
  """Runs the tiny preset in-process for ``updates`` meta-updates; returns its directory."""
  out = str(tmp_path_factory.mktemp("tiny") / "run")
  assert main(TINY + ["--out", out, "--num-updates", str(updates), "--checkpoint-every",
                      str(every), *extra]) == 0
  return out
