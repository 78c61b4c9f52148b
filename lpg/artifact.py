"""The frozen-rule artifact: a ``.pkl`` of plain data that is safe to load.

The file is a pickle of built-in types only::

    {"format": "lpg-rule", "format_version": 1,
     "config": {LPGConfig fields},
     "params": {"<haiku module path>/<name>": {"dtype": str, "shape": [int], "data": bytes}},
     "metadata": {JSON-like: command, envs, meta_updates, seed, git_commit, date, ...},
     "checksum": "<sha256 of config, metadata and every array>"}

Optional top-level fields: ``"family"`` (the kind of rule, ``"lpg"`` when
absent; ``BUILDERS`` rebuilds the rule of each known family from its config) and any other key with plain-data values (``LoadedRule.extras``, e.g.
meta-test settings); when present they are covered by the checksum, and files
without them keep the checksum of format version 1.

``load_rule`` is bounded before it builds anything: the file is at most
``MAX_BYTES``; a scan of the pickle opcodes (``pickletools.genops``, at most
``MAX_OPCODES``) admits only the opcodes of plain data, at most
``MAX_CONTAINERS`` containers, and no shared containers (a memo reference may
only repeat a string or bytes object, at most ``MAX_SHARED_BYTES`` in all), so
a reference bomb of nested shared lists is refused in milliseconds; the
Unpickler then refuses every global, so a hostile file cannot import or call
anything; the loaded tree is at most ``MAX_DEPTH`` deep.  Then the format,
version, family, checksum, finiteness, and that the arrays have exactly the
tree, shapes and dtypes of a fresh ``init`` under the stored config.  A numpy
archive or a checkpoint directory is named as such (use ``rule.pkl``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import pickletools
import tempfile
from typing import Any, NamedTuple

import jax
import numpy as np

from lpg.metagenrl import MetaGenRLConfig, MetaGenRLRule
from lpg.rule import LPGConfig, LPGRule, UpdateRule

FORMAT = "lpg-rule"
FORMAT_VERSION = 1
FAMILY = "lpg"
_CORE_FIELDS = ("format", "format_version", "family", "config", "params", "metadata", "checksum")
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None), bytes)

MAX_BYTES = 256 << 20       # a rule of the largest config is a few MiB.
MAX_OPCODES = 1_000_000     # ~0.3 s of pickletools.genops; a rule has a few hundred.
MAX_CONTAINERS = 100_000    # dicts, lists and tuples in the whole file.
MAX_DEPTH = 16              # nesting of the loaded tree (a rule needs 5).
MAX_SHARED_BYTES = 1 << 24  # total size of the strings/bytes that memo references repeat.
_MAX_BYTES = MAX_BYTES      # old name.

# Opcodes that pickle.dumps emits for plain data (protocols 0-5); anything else
# (globals, reduce, build, persistent ids, DUP, sets, ...) is refused.
_CONTAINER_OPS = frozenset({"EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1",
                            "TUPLE2", "TUPLE3", "LIST", "DICT"})
_ATOM_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                       "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINSTRING",
                       "BINSTRING", "STRING"})
_MEMO_PUT_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PLAIN_OPS = _CONTAINER_OPS | _ATOM_OPS | _MEMO_PUT_OPS | _MEMO_GET_OPS | frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "FLOAT", "BINFLOAT"})


class ArtifactError(ValueError):
  """A rule artifact that cannot be used; the message says why, in one line."""


class LoadedRule(NamedTuple):
  """A validated artifact.

  For a family of ``BUILDERS`` (``lpg``, ``metagenrl``): ``rule``/``config`` are
  the rule and its config (``LPGRule``/``LPGConfig``, ``MetaGenRLRule``/
  ``MetaGenRLConfig``), ``params`` the haiku tree checked against ``rule.init``.
  For another family (only when the caller asked for it): ``rule`` is None,
  ``config`` the stored dict and ``params`` the unchecked tree of finite float
  arrays.  ``extras``: the optional top-level fields other than ``family``.
  """
  rule: UpdateRule | None
  params: dict
  config: Any
  metadata: dict
  checksum: str
  family: str = FAMILY
  extras: dict = {}


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


def _checksum(config: dict, metadata: dict, arrays: dict[str, dict],
              optional: dict | None = None) -> str:
  """sha256 of the fields; ``optional`` (family and extras) only when not empty."""
  h = hashlib.sha256()
  h.update(json.dumps(config, sort_keys=True).encode())
  h.update(json.dumps(metadata, sort_keys=True, default=str).encode())
  for key in sorted(arrays):
    a = arrays[key]
    h.update(key.encode())
    h.update(str(a["dtype"]).encode())
    h.update(json.dumps(list(a["shape"])).encode())
    h.update(a["data"])
  if optional:
    h.update(json.dumps(optional, sort_keys=True).encode())
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


def atomic_write(path: str, data: bytes, prefix: str = ".tmp-", suffix: str = ".part") -> None:
  """Writes ``data`` to ``path`` atomically: an fsync-ed temporary file (named
  ``prefix...suffix`` in the same directory, so a killed writer's leftovers can be
  recognised), a rename, then an fsync of the directory."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)      # mkstemp's 0600 would make shared rules unreadable
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


_atomic_write = atomic_write  # older private name


def family_of(config) -> str:
  """The family whose rule ``config`` builds (``FAMILY`` for a plain dict)."""
  return next((name for name, (kind, _) in BUILDERS.items() if isinstance(config, kind)), FAMILY)


def encode_rule(params, config, metadata: dict | None = None, family: str | None = None,
                extras: dict | None = None) -> tuple[bytes, str]:
  """Serialises a rule to artifact bytes; returns ``(bytes, checksum)``.

  ``config``: an ``LPGConfig`` or ``MetaGenRLConfig`` (or, for another
  ``family``, a plain dict); ``family`` defaults to the config's
  (``family_of``).  ``extras``: optional plain-data top-level fields.  An
  ``lpg`` rule without extras is written in exactly the format-version-1 layout.
  """
  family = family_of(config) if family is None else family
  arrays = {}
  for key, value in _flatten(jax.device_get(params)).items():
    value = np.ascontiguousarray(np.asarray(value))
    arrays[key] = {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}
  config_d = dict(config) if isinstance(config, dict) else dataclasses.asdict(config)
  metadata_d = _plain(metadata or {})
  optional = _plain(dict(extras or {}), "extras")
  if clash := set(optional) & set(_CORE_FIELDS):
    raise ValueError(f"extras may not redefine core fields {sorted(clash)}")
  if family != FAMILY:
    optional["family"] = str(family)
  checksum = _checksum(config_d, metadata_d, arrays, optional)
  payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_d,
             "params": arrays, "metadata": metadata_d, "checksum": checksum, **optional}
  return pickle.dumps(payload, protocol=4), checksum


def save_rule(path: str, params, config, metadata: dict | None = None, family: str | None = None,
              extras: dict | None = None) -> str:
  """Writes the rule atomically to ``path``; returns its checksum (see ``encode_rule``)."""
  data, checksum = encode_rule(params, config, metadata, family, extras)
  _atomic_write(path, data)
  return checksum


def _refuse(source: str, why: str) -> ArtifactError:
  return ArtifactError(f"refusing to load {source}: {why}; a rule artifact holds plain data only "
                       "(the file may be hostile or not an lpg rule)")


def _scan(data: bytes, source: str) -> None:
  """Bounds the pickle before it is built (see the module docstring); linear in its opcodes."""
  memo: dict[Any, int] = {}   # memo index -> size of a repeatable atom, or -1 (not repeatable)
  last_atom, shared, containers = -1, 0, 0
  for count, (op, arg, _) in enumerate(pickletools.genops(data)):
    name = op.name
    if count >= MAX_OPCODES:
      raise _refuse(source, f"more than {MAX_OPCODES} pickle opcodes")
    if name not in _PLAIN_OPS:
      raise _refuse(source, f"the file uses pickle opcode {name} (globals, calls and shared "
                            "objects are refused)")
    if name in _MEMO_PUT_OPS:
      memo[len(memo) if name == "MEMOIZE" else arg] = last_atom
    elif name in _MEMO_GET_OPS:
      size = memo.get(arg, -1)
      if size < 0:
        raise _refuse(source, "it repeats a reference to one container (shared references, "
                              "such as a reference bomb, are refused)")
      shared += size
      if shared > MAX_SHARED_BYTES:
        raise _refuse(source, f"repeated strings exceed {MAX_SHARED_BYTES} bytes")
    elif name in _CONTAINER_OPS:
      containers += 1
      if containers > MAX_CONTAINERS:
        raise _refuse(source, f"more than {MAX_CONTAINERS} containers")
    last_atom = len(arg) if name in _ATOM_OPS else -1


def _check_plain(obj, source: str, depth: int = 0) -> None:
  """Built-in plain types only, at most ``MAX_DEPTH`` deep (a tree: ``_scan`` ran first)."""
  if depth > MAX_DEPTH:
    raise ArtifactError(f"{source} is not an lpg rule: nesting deeper than {MAX_DEPTH}")
  if not isinstance(obj, _PLAIN):
    raise ArtifactError(f"{source} is not an lpg rule: unexpected {type(obj).__name__}")
  if isinstance(obj, dict):
    for k, v in obj.items():
      _check_plain(k, source, depth + 1)
      _check_plain(v, source, depth + 1)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _check_plain(v, source, depth + 1)


_NOT_A_RULE = "not a rule artifact: use rule.pkl from the run directory"


def _sniff(data: bytes, source: str) -> None:
  """Names files that are something else than a rule (empty, a numpy archive)."""
  if not data:
    raise ArtifactError(f"{source} is empty (0 bytes); re-export or re-download the rule")
  if data[:4] == b"PK\x03\x04" or data[:6] == b"\x93NUMPY":
    raise ArtifactError(f"{source} is a numpy archive such as a meta-training checkpoint, "
                        f"{_NOT_A_RULE}")


def _unpickle(data: bytes, source: str) -> dict:
  """The payload dict, bounded and plain (see the module docstring)."""
  _sniff(data, source)
  try:
    _scan(data, source)
    payload = _RefusingUnpickler(io.BytesIO(data)).load()
  except ArtifactError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
          AttributeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
    raise ArtifactError(f"{source} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "re-export or re-download it") from None
  _check_plain(payload, source)
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ArtifactError(f"{source} is not an lpg rule artifact (no 'format': '{FORMAT}')")
  version = payload.get("format_version")
  if version != FORMAT_VERSION:
    raise ArtifactError(f"{source} has format version {version!r}, this toolkit reads version "
                        f"{FORMAT_VERSION}; re-export the rule with a matching lpg version")
  for field, kind in (("config", dict), ("params", dict), ("metadata", dict), ("checksum", str),
                      ("family", str)):
    if not isinstance(payload.get(field, FAMILY if field == "family" else None), kind):
      raise ArtifactError(f"{source} is malformed: field {field!r} missing or not a {kind.__name__}")
  return payload


def _arrays(payload: dict, source: str) -> dict[str, np.ndarray]:
  """``{"module/name": array}``: checksum, float dtype and finiteness checked."""
  optional = {k: v for k, v in payload.items() if k not in _CORE_FIELDS or k == "family"}
  arrays = payload["params"]
  if _checksum(payload["config"], payload["metadata"], arrays, optional) != payload["checksum"]:
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
  return flat


# Known families: name -> (config class, rule class).  A config class needs
# ``from_dict`` (or keyword fields) and the rule ``init(key)``.
BUILDERS: dict[str, tuple[type, type]] = {
    FAMILY: (LPGConfig, LPGRule),
    "metagenrl": (MetaGenRLConfig, MetaGenRLRule),
}


def _build_rule(family: str, config_d: dict, flat: dict, source: str):
  """``(rule, config)`` of a known family; its arrays must match a fresh ``init`` exactly."""
  config_class, rule_class = BUILDERS[family]
  try:
    config = (config_class.from_dict(config_d) if hasattr(config_class, "from_dict")
              else config_class(**config_d))
  except (TypeError, ValueError) as e:
    raise ArtifactError(f"{source} has an invalid {family} rule config: {e}") from None
  rule = rule_class(config)
  expected = _flatten(jax.eval_shape(rule.init, jax.random.PRNGKey(0)))
  if set(expected) != set(flat):
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    raise ArtifactError(f"{source}: parameters do not match the rule architecture "
                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
  for key, spec in expected.items():
    if tuple(spec.shape) != flat[key].shape or np.dtype(spec.dtype) != flat[key].dtype:
      raise ArtifactError(f"{source}: parameter {key!r} has shape {flat[key].shape} "
                          f"{flat[key].dtype}, the config needs {tuple(spec.shape)} {spec.dtype}")
  return rule, config


def _family_names(families) -> tuple[str, ...]:
  return (families,) if isinstance(families, str) else tuple(families)


def decode_rule(data: bytes, source: str = "artifact",
                families: str | tuple[str, ...] = (FAMILY,)) -> LoadedRule:
  """Parses and validates artifact bytes (see ``load_rule``)."""
  payload = _unpickle(data, source)
  family = payload.get("family", FAMILY)
  accepted = _family_names(families)
  if family not in accepted:
    raise ArtifactError(f"{source} holds a rule of family {family!r}; this needs "
                        f"{' or '.join(repr(f) for f in accepted)}")
  flat = _arrays(payload, source)
  extras = {k: v for k, v in payload.items() if k not in _CORE_FIELDS}
  rule, config = (_build_rule(family, payload["config"], flat, source) if family in BUILDERS
                  else (None, payload["config"]))
  return LoadedRule(rule=rule, params=_unflatten(flat), config=config,
                    metadata=payload["metadata"], checksum=payload["checksum"],
                    family=family, extras=extras)


def _directory_message(path: str) -> str:
  """Why a directory is not a rule, naming the ``rule.pkl`` to use where one is near."""
  here = os.path.abspath(path)
  for directory in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
    candidate = os.path.join(directory, "rule.pkl")
    if os.path.isfile(candidate):
      kind = "a meta-training run directory" if directory == here else (
          "a meta-training checkpoint directory")
      return f"rule path {path} is {kind}, not a rule artifact: use {candidate}"
  names = set(os.listdir(path))
  if names & {"checkpoint.npz", "_CHECKPOINT_METADATA", "checkpoints", "config.json"}:
    return f"rule path {path} is a meta-training checkpoint directory, {_NOT_A_RULE}"
  return f"rule path {path} is a directory, expected a .pkl file"


def load_rule(path: str, families: str | tuple[str, ...] = (FAMILY,)) -> LoadedRule:
  """Loads and validates a rule artifact written by ``save_rule``.

  ``families``: the rule families the caller can use (default ``"lpg"`` only);
  an artifact of any other family is refused.

  Raises:
    ArtifactError: missing, too large, hostile (globals, shared references,
      too many or too deeply nested containers), truncated, wrong-version,
      wrong-family, wrong-shape or non-finite file, a numpy archive or a
      checkpoint directory; the message names the problem in one line.
  """
  try:
    if os.path.isdir(path):
      raise ArtifactError(_directory_message(path))
    size = os.path.getsize(path)
    if size > MAX_BYTES:
      raise ArtifactError(f"{path} is {size} bytes, more than any lpg rule ({MAX_BYTES}); "
                          "refusing to load")
    with open(path, "rb") as f:
      data = f.read(MAX_BYTES + 1)
  except FileNotFoundError:
    raise ArtifactError(f"rule file {path} does not exist") from None
  except IsADirectoryError:
    raise ArtifactError(f"rule path {path} is a directory, expected a .pkl file") from None
  except PermissionError:
    raise ArtifactError(f"rule file {path} is not readable (permission denied)") from None
  if len(data) > MAX_BYTES:
    raise ArtifactError(f"{path} is more than {MAX_BYTES} bytes; refusing to load")
  return decode_rule(data, source=path, families=families)
