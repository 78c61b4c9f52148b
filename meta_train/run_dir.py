"""The run directory of ``lpg-meta-train``: what is in it and how it may be reused.

``DIR/config.json`` (the record) holds the resolved ``TrainConfig``, the preset,
the ``--init-rule`` it started from, the first command and ``history``: one
entry per start or resume (command, date, devices, the settings it changed).
``DIR/checkpoint-<step>.npz`` (``meta_train.checkpoint``), ``DIR/metrics.jsonl``
and ``DIR/rule.pkl`` complete it.  A directory whose run stopped before its first
checkpoint holds only files of this job that can be recreated, so it may be
reused (or resumed) as a fresh start.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os

from lpg.cli import UserError
from meta_train import checkpoint

RECORD = "config.json"
METRICS = "metrics.jsonl"
RULE = "rule.pkl"
# Files a run writes before its first checkpoint (a directory holding only these can be reused).
_PRE_CHECKPOINT = (RECORD, METRICS, f"{METRICS}.tmp", ".checkpoint-*.tmp", ".tmp-*.part")


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def reusable(out: str) -> bool:
  """True if ``out`` holds only files a run writes before its first checkpoint."""
  names = os.listdir(out)
  return bool(names) and not checkpoint.exists(out) and all(
      any(fnmatch.fnmatch(n, p) for p in _PRE_CHECKPOINT) for n in names)


def check_new_run_dir(out: str) -> str | None:
  """Checks ``out`` for a new run; returns a one-line note if it is reused, else None."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; give a directory path")
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"--out {out}: {parent} is a file, not a directory; choose another path")
  if not os.path.isdir(out) or not os.listdir(out):
    return None
  if reusable(out):
    return (f"--out {out} holds a run that stopped before its first checkpoint: starting a new "
            "run there")
  raise UserError(f"--out {out} is not empty; pass --resume to continue it or choose a new "
                  "directory")


def read_record(out: str) -> dict:
  """The record of the run in ``out``, for ``--resume``; one-line errors otherwise."""
  path = os.path.join(out, RECORD)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; give a run directory")
  if not os.path.isfile(path):
    if checkpoint.exists(out):
      raise UserError(f"--resume: {path} is missing (the run's settings); restore it from a "
                      "backup, or start a new run in a new --out")
    raise UserError(f"--resume: no run in {out}; start a new run without --resume")
  try:
    with open(path) as f:
      record = json.load(f)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
      raise ValueError("no 'config' object")
  except (ValueError, OSError, UnicodeDecodeError) as e:
    raise UserError(f"--resume: {path} is damaged ({type(e).__name__}: {' '.join(str(e).split())}"
                    "); restore it from a backup, or start a new run in a new --out") from None
  return record


def history(record: dict) -> list[dict]:
  """Every start and resume of the run, oldest first."""
  return list(record.get("history") or [{"command": record.get("command"),
                                         "date": record.get("started")}])


def write_record(out: str, record: dict) -> None:
  checkpoint.atomic_write(os.path.join(out, RECORD),
                          json.dumps(record, indent=2).encode())
