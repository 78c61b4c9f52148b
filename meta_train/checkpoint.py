"""Atomic, pickle-free checkpoints of a whole ``TrainState``.

A checkpoint is an ``.npz`` of the state's leaves in tree order (``leaf_00000``
...) plus a JSON header (``__header__``: format, step, number of leaves).  It is
read with ``allow_pickle=False`` and restored into the structure of a template
state built from the run's config, checking every shape and dtype, so a
checkpoint from a different config is refused instead of silently misread.
Writes go to a temporary file that is fsync-ed and renamed over the old one.
"""
from __future__ import annotations

import io
import json
import os

import jax
import numpy as np

from lpg.artifact import _atomic_write

FORMAT = "lpg-meta-train-checkpoint"
VERSION = 1
FILENAME = "checkpoint.npz"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored; one-line message."""


def save(path: str, state, extra: dict | None = None) -> None:
  """Writes ``state`` (a pytree of arrays) atomically to ``path``."""
  leaves = jax.tree_util.tree_leaves(jax.device_get(state))
  header = {"format": FORMAT, "version": VERSION, "num_leaves": len(leaves), **(extra or {})}
  arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
  buf = io.BytesIO()
  np.savez(buf, __header__=np.asarray(json.dumps(header)), **arrays)
  _atomic_write(path, buf.getvalue())


def read_header(path: str) -> dict:
  try:
    with np.load(path, allow_pickle=False) as z:
      return json.loads(str(z["__header__"]))
  except FileNotFoundError:
    raise CheckpointError(f"no checkpoint at {path}") from None
  except Exception as e:  # zip/npz/JSON damage of any kind
    raise CheckpointError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None


def restore(path: str, template):
  """Reads ``path`` into the structure of ``template`` (arrays or ShapeDtypeStructs)."""
  header = read_header(path)
  if header.get("format") != FORMAT or header.get("version") != VERSION:
    raise CheckpointError(f"{path} is not a version-{VERSION} meta-training checkpoint")
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if header.get("num_leaves") != len(leaves):
    raise CheckpointError(f"{path} was written by a different configuration "
                          f"({header.get('num_leaves')} arrays, this config needs {len(leaves)})")
  out = []
  with np.load(path, allow_pickle=False) as z:
    for i, ref in enumerate(leaves):
      a = z[f"leaf_{i:05d}"]
      if a.shape != tuple(ref.shape) or a.dtype != np.dtype(ref.dtype):
        raise CheckpointError(f"{path}: array {i} is {a.shape} {a.dtype}, the config needs "
                              f"{tuple(ref.shape)} {np.dtype(ref.dtype)}")
      out.append(a)
  return jax.tree_util.tree_unflatten(treedef, out), header


def exists(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, FILENAME))
