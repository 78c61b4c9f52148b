"""lpg-meta-train's bad-input matrix: exit 2, one line on stderr, no traceback, nothing changed.

Every case runs in-process.  Cases that resume work on a copy of one tiny run that
checkpointed at meta-update 2; the whole temporary directory is snapshotted (names
and bytes) before and after, and must not change.
"""
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from lpg.artifact import save_rule
from lpg.rule import LPGConfig, LPGRule
from meta_train import checkpoint
from meta_train.cli import main
from meta_train_helpers import TINY
from meta_train_helpers import tiny_run as _run_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return _run_tiny(tmp_path_factory, 2, 2)


def _newest(run):
  return checkpoint.list_checkpoints(run)[-1][1]


def _write(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


def _truncate(path):
  data = open(path, "rb").read()
  _write(path, data[: len(data) // 2])


def _flip_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  _write(path, bytes(data))


def _other_rule(path):
  rule = LPGRule(LPGConfig(hidden=16))
  save_rule(path, jax.device_get(rule.init(jax.random.PRNGKey(0))), LPGConfig(hidden=16))


# (id, setup(tmp, run) -> argv, needle).  ``run`` is a copy of the tiny run; ``new`` a fresh path.
NEW = [
    ("meta-lr-nan", lambda t: ["--meta-lr", "nan"], "not a finite number"),
    ("meta-lr-inf", lambda t: ["--meta-lr", "inf"], "not a finite number"),
    ("meta-lr-zero", lambda t: ["--meta-lr", "0"], "must be > 0"),
    ("time-limit-negative", lambda t: ["--time-limit", "-5"], "must be > 0"),
    ("time-limit-zero", lambda t: ["--time-limit", "0"], "must be > 0"),
    ("num-updates-fraction", lambda t: ["--num-updates", "1.5"], "not a whole number"),
    ("num-updates-word", lambda t: ["--num-updates", "x"], "is not a number"),
    ("num-updates-negative", lambda t: ["--num-updates", "-3"], "must be >= 0"),
    ("agents-zero", lambda t: ["--agents-per-env", "0"], "must be >= 1"),
    ("chunk-not-dividing", lambda t: ["--agent-chunk", "3"], "must divide"),
    ("seed-word", lambda t: ["--seed", "abc"], "is not a number"),
    ("env-typo", lambda t: ["--envs", "chain/shrot"], "did you mean 'chain/short'"),
    ("env-unknown", lambda t: ["--envs", "everything"], "unknown environment"),
    ("env-empty", lambda t: ["--envs", ","], "--envs is empty"),
    ("preset-unknown", lambda t: ["--preset", "huge"], "unknown preset"),
    ("unknown-flag", lambda t: ["--bogus"], "unrecognized arguments"),
    ("multi-host-partial", lambda t: ["--coordinator", "127.0.0.1:1"], "needs all of"),
    ("out-is-file", lambda t: ["--out", str(t / "afile")], "is a file"),
    ("out-under-file", lambda t: ["--out", str(t / "afile" / "sub")], "is a file"),
    ("out-not-empty", lambda t: ["--out", str(t / "foreign")], "is not empty"),
    ("init-rule-missing", lambda t: ["--init-rule", str(t / "nosuch.pkl")], "does not exist"),
    ("init-rule-directory", lambda t: ["--init-rule", str(t / "foreign")], "is a directory"),
    ("init-rule-empty", lambda t: ["--init-rule", str(t / "empty.pkl")], "empty.pkl"),
    ("init-rule-garbage", lambda t: ["--init-rule", str(t / "garbage.pkl")], "garbage.pkl"),
    ("init-rule-checkpoint", lambda t: ["--init-rule", str(t / "ckpt.npz")], "npz"),
    ("init-rule-other-config", lambda t: ["--init-rule", str(t / "other.pkl")],
     "choose a matching preset"),
]
RESUME = [
    ("no-run", lambda t, r: ["--out", str(t / "nothing")], None, "no run in"),
    ("config-corrupt", lambda t, r: [], lambda r: _write(os.path.join(r, "config.json"), b"{oops"),
     "config.json is damaged"),
    ("config-not-a-config", lambda t, r: [],
     lambda r: _write(os.path.join(r, "config.json"), b'{"config": {"zzz": 1}}'),
     "does not hold a valid config"),
    ("config-missing", lambda t, r: [], lambda r: os.remove(os.path.join(r, "config.json")),
     "config.json is missing"),
    ("seed-conflict", lambda t, r: ["--seed", "5"], None, "--seed 5 (the run has 0)"),
    ("preset-conflict", lambda t, r: ["--preset", "smoke"], None, "--preset smoke (the run has tiny)"),
    ("envs-conflict", lambda t, r: ["--envs", "tabular/dense"], None, "--envs tabular/dense"),
    ("meta-lr-conflict", lambda t, r: ["--meta-lr", "0.5"], None, "--meta-lr 0.5"),
    ("checkpoint-truncated", lambda t, r: [], lambda r: _truncate(_newest(r)), "is damaged"),
    ("checkpoint-flipped", lambda t, r: [], lambda r: _flip_byte(_newest(r)), "is damaged"),
    ("checkpoint-empty", lambda t, r: [], lambda r: _write(_newest(r), b""), "is damaged"),
]


def _snapshot(root) -> dict:
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def _check_one_line(code, capsys, needle):
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == 2, err
  assert len(lines) == 1 and lines[0].startswith("lpg-meta-train: error: "), err
  assert "Traceback" not in err
  assert needle in lines[0], lines[0]


@pytest.mark.parametrize("case", NEW, ids=[c[0] for c in NEW])
def test_new_run_bad_input(case, tmp_path, capsys, tiny_run):
  _, argv, needle = case
  (tmp_path / "afile").write_text("keep me")
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "x.txt").write_text("data")
  (tmp_path / "empty.pkl").write_bytes(b"")
  (tmp_path / "garbage.pkl").write_bytes(os.urandom(512))
  shutil.copy(_newest(tiny_run), tmp_path / "ckpt.npz")
  _other_rule(str(tmp_path / "other.pkl"))
  before = _snapshot(tmp_path)
  args = argv(tmp_path)
  code = main(TINY + (["--out", str(tmp_path / "new")] if "--out" not in args else []) + args)
  _check_one_line(code, capsys, needle)
  assert _snapshot(tmp_path) == before
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", RESUME, ids=[c[0] for c in RESUME])
def test_resume_bad_input(case, tmp_path, capsys, tiny_run):
  _, argv, damage, needle = case
  run = str(tmp_path / "run")
  shutil.copytree(tiny_run, run)
  if damage:
    damage(run)
  before = _snapshot(tmp_path)
  args = argv(tmp_path, run)
  code = main(["--resume", "--no-progress"] + (["--out", run] if "--out" not in args else [])
              + args)
  _check_one_line(code, capsys, needle)
  assert _snapshot(tmp_path) == before
  assert not (tmp_path / "nothing").exists()


def test_counts_accept_scientific_notation():
  from meta_train.cli import build_parser, make_config
  args = build_parser().parse_args(["--preset", "tiny", "--num-updates", "1e6",
                                    "--checkpoint-every", "1e3"])
  config = make_config(args)
  assert (config.num_updates, config.checkpoint_every) == (1_000_000, 1000)
