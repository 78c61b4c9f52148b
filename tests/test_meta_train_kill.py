"""kill -9 during compilation, mid-run and during a checkpoint write; --resume reaches the
same rule, bit for bit, as an uninterrupted run."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lpg.artifact import load_rule
from meta_train import checkpoint
from meta_train.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "meta_train_kill_driver.py")
ARGS = ["--preset", "tiny", "--num-updates", "6", "--checkpoint-every", "2", "--no-progress"]


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  env.update(extra)
  return env


def _assert_same_rule(a_dir, b_dir):
  a, b = load_rule(os.path.join(a_dir, "rule.pkl")), load_rule(os.path.join(b_dir, "rule.pkl"))
  assert a.metadata["meta_updates"] == b.metadata["meta_updates"] == 6
  for m in a.params:
    for n in a.params[m]:
      np.testing.assert_array_equal(a.params[m][n], b.params[m][n])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("straight") / "run")
  assert main(ARGS + ["--out", out]) == 0
  return out


def _resume(out, capsys):
  assert main(["--out", out, "--resume", "--no-progress"]) == 0
  return capsys.readouterr().err


def test_kill_during_compilation_then_resume(uninterrupted, tmp_path, capsys):
  out = str(tmp_path / "run")
  # A fresh compilation cache, so the first call really compiles.
  p = subprocess.Popen([sys.executable, "-m", "meta_train.cli", *ARGS, "--out", out],
                       env=_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache")),
                       stderr=subprocess.PIPE, text=True)
  try:
    for line in p.stderr:  # the banner comes after the run directory is written, before compiling
      if "devices:" in line:
        p.kill()
        break
  finally:
    p.kill()
    p.wait(timeout=60)
  assert p.returncode == -9
  assert os.path.isfile(os.path.join(out, "config.json")) and not checkpoint.exists(out)
  err = _resume(out, capsys)
  assert "no checkpoint yet" in err and "starting it afresh" in err
  _assert_same_rule(uninterrupted, out)


@pytest.mark.parametrize("mode,k,restart_step", [
    ("after-call", 3, 2),          # mid-run: killed at meta-update 3, last checkpoint at 2
    ("checkpoint-write", 2, 2),    # killed half-way through writing the checkpoint at 4
])
def test_kill_then_resume_reaches_the_same_rule(uninterrupted, tmp_path, capsys, mode, k,
                                                restart_step):
  out = str(tmp_path / "run")
  p = subprocess.run([sys.executable, DRIVER, mode, str(k), *ARGS, "--out", out], env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == -9, p.stderr
  assert [s for s, _ in checkpoint.list_checkpoints(out)] == [restart_step]
  stale = [f for f in os.listdir(out) if f.endswith(".tmp")]
  assert bool(stale) == (mode == "checkpoint-write")
  err = _resume(out, capsys)
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
  if stale:
    assert "left by a checkpoint write that was interrupted" in err
  _assert_same_rule(uninterrupted, out)
