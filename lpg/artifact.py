"""The frozen-rule artifact: a ``.pkl`` of plain data that is safe to load.

The file is a pickle of built-in types only::

    {"format": "lpg-rule", "format_version": 1,
     "config": {LPGConfig fields},
     "params": {"<haiku module path>/<name>": {"dtype": str, "shape": [int], "data": bytes}},
     "metadata": {JSON-like: command, envs, meta_updates, seed, git_commit, date, ...},
     "checksum": "<sha256 of config, metadata and every array>"}

``load_rule`` reads it with an Unpickler whose ``find_class`` refuses every
global, so a hostile file cannot import or call anything; it then checks the
format, version, checksum, finiteness, and that the arrays have exactly the tree,
shapes and dtypes of a fresh ``init`` under the stored config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import tempfile
from typing import NamedTuple

import jax
import numpy as np

from lpg.rule import LPGConfig, LPGRule

FORMAT = "lpg-rule"
FORMAT_VERSION = 1
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None), bytes)
_MAX_BYTES = 1 << 30


class ArtifactError(ValueError):
  """A rule artifact that cannot be used; the message says why, in one line."""


class LoadedRule(NamedTuple):
  rule: LPGRule
  params: dict
  config: LPGConfig
  metadata: dict
  checksum: str


class _RefusingUnpickler(pickle.Unpickler):
  """Unpickles built-in containers and scalars only; any global is refused."""

  def find_class(self, module, name):
    raise ArtifactError(
        f"refusing to load: the file asks to import {module}.{name}; a rule artifact holds "
        "plain data only (it may be hostile or not an lpg rule)")

  def persistent_load(self, pid):
    raise ArtifactError("refusing to load: the file uses persistent ids; not an lpg rule")


def _flatten(params) -> dict:
  """``{module: {name: leaf}}`` -> ``{"module/name": leaf}`` (leaves untouched)."""
  return {f"{module}/{name}": value
          for module, leaves in params.items() for name, value in leaves.items()}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  params: dict[str, dict] = {}
  for key, value in flat.items():
    module, _, name = key.rpartition("/")
    params.setdefault(module, {})[name] = value
  return params


def _checksum(config: dict, metadata: dict, arrays: dict[str, dict]) -> str:
  h = hashlib.sha256()
  h.update(json.dumps(config, sort_keys=True).encode())
  h.update(json.dumps(metadata, sort_keys=True, default=str).encode())
  for key in sorted(arrays):
    a = arrays[key]
    h.update(key.encode())
    h.update(str(a["dtype"]).encode())
    h.update(json.dumps(list(a["shape"])).encode())
    h.update(a["data"])
  return h.hexdigest()


def _plain(value, where="metadata"):
  """Converts JSON-like values to plain built-ins; refuses anything else."""
  if isinstance(value, dict):
    return {str(k): _plain(v, where) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, where) for v in value]
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, (str, int, float, bool, type(None))):
    return value
  raise TypeError(f"{where} may hold only plain JSON-like values, got {type(value).__name__}")


def _atomic_write(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def encode_rule(params, config: LPGConfig, metadata: dict | None = None) -> tuple[bytes, str]:
  """Serialises a rule to artifact bytes; returns ``(bytes, checksum)``."""
  arrays = {}
  for key, value in _flatten(jax.device_get(params)).items():
    value = np.ascontiguousarray(np.asarray(value))
    arrays[key] = {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}
  config_d = dataclasses.asdict(config)
  metadata_d = _plain(metadata or {})
  checksum = _checksum(config_d, metadata_d, arrays)
  payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_d,
             "params": arrays, "metadata": metadata_d, "checksum": checksum}
  return pickle.dumps(payload, protocol=4), checksum


def save_rule(path: str, params, config: LPGConfig, metadata: dict | None = None) -> str:
  """Writes the rule atomically to ``path``; returns its checksum."""
  data, checksum = encode_rule(params, config, metadata)
  _atomic_write(path, data)
  return checksum


def _check_plain(obj, depth=0):
  if depth > 8:
    raise ArtifactError("not an lpg rule: nesting too deep")
  if not isinstance(obj, _PLAIN):
    raise ArtifactError(f"not an lpg rule: unexpected {type(obj).__name__}")
  if isinstance(obj, dict):
    for k, v in obj.items():
      _check_plain(k, depth + 1)
      _check_plain(v, depth + 1)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _check_plain(v, depth + 1)


def decode_rule(data: bytes, source: str = "artifact") -> LoadedRule:
  """Parses and validates artifact bytes (see ``load_rule``)."""
  try:
    payload = _RefusingUnpickler(io.BytesIO(data)).load()
  except ArtifactError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
          AttributeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
    raise ArtifactError(f"{source} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "re-export or re-download it") from None
  _check_plain(payload)
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ArtifactError(f"{source} is not an lpg rule artifact (no 'format': '{FORMAT}')")
  version = payload.get("format_version")
  if version != FORMAT_VERSION:
    raise ArtifactError(f"{source} has format version {version!r}, this toolkit reads version "
                        f"{FORMAT_VERSION}; re-export the rule with a matching lpg version")
  for field, kind in (("config", dict), ("params", dict), ("metadata", dict), ("checksum", str)):
    if not isinstance(payload.get(field), kind):
      raise ArtifactError(f"{source} is malformed: field {field!r} missing or not a {kind.__name__}")
  try:
    config = LPGConfig(**payload["config"])
  except (TypeError, ValueError) as e:
    raise ArtifactError(f"{source} has an invalid rule config: {e}") from None
  arrays = payload["params"]
  if _checksum(payload["config"], payload["metadata"], arrays) != payload["checksum"]:
    raise ArtifactError(f"{source} fails its checksum: the file was modified or damaged")
  flat = {}
  for key, a in arrays.items():
    try:
      value = np.frombuffer(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
    except (KeyError, TypeError, ValueError) as e:
      raise ArtifactError(f"{source}: array {key!r} is malformed ({e})") from None
    if value.dtype.kind != "f":
      raise ArtifactError(f"{source}: array {key!r} has non-float dtype {value.dtype}")
    if not np.all(np.isfinite(value)):
      raise ArtifactError(f"{source}: array {key!r} holds non-finite values (NaN or inf)")
    flat[key] = value.copy()
  rule = LPGRule(config)
  expected = _flatten(jax.eval_shape(rule.init, jax.random.PRNGKey(0)))
  if set(expected) != set(flat):
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    raise ArtifactError(f"{source}: parameters do not match the rule architecture "
                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
  for key, spec in expected.items():
    if tuple(spec.shape) != flat[key].shape or np.dtype(spec.dtype) != flat[key].dtype:
      raise ArtifactError(f"{source}: parameter {key!r} has shape {flat[key].shape} "
                          f"{flat[key].dtype}, the config needs {tuple(spec.shape)} {spec.dtype}")
  return LoadedRule(rule=rule, params=_unflatten(flat), config=config,
                    metadata=payload["metadata"], checksum=payload["checksum"])


def load_rule(path: str) -> LoadedRule:
  """Loads and validates a rule artifact written by ``save_rule``.

  Raises:
    ArtifactError: missing, hostile, truncated, wrong-version, wrong-shape or
      non-finite file; the message names the problem in one line.
  """
  try:
    size = os.path.getsize(path)
    if size > _MAX_BYTES:
      raise ArtifactError(f"{path} is {size} bytes, larger than any lpg rule; refusing to load")
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise ArtifactError(f"rule file {path} does not exist") from None
  except IsADirectoryError:
    raise ArtifactError(f"rule path {path} is a directory, expected a .pkl file") from None
  except PermissionError:
    raise ArtifactError(f"rule file {path} is not readable (permission denied)") from None
  return decode_rule(data, source=path)
