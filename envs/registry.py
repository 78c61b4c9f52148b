"""Name -> environment constructor.  One registry serves meta-training and meta-testing."""
from __future__ import annotations

import difflib
from typing import Callable

from envs.base import Environment

_REGISTRY: dict[str, Callable[..., Environment]] = {}


def register(name: str, factory: Callable[..., Environment]) -> None:
  """Registers ``factory(**kwargs) -> Environment`` under ``name``."""
  if name in _REGISTRY:
    raise ValueError(f"environment {name!r} is already registered")
  _REGISTRY[name] = factory


def list_envs(prefix: str | None = None) -> list[str]:
  """Sorted registered names, optionally only those starting with ``prefix``."""
  names = sorted(_REGISTRY)
  if prefix:
    names = [n for n in names if n.startswith(prefix)]
  return names


def unknown_env_message(name: str) -> str:
  close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
  if not close:
    lowered = {n.lower(): n for n in _REGISTRY}
    close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)]
  hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return (f"unknown environment {name!r}{hint} "
          f"(see envs.list_envs() for all {len(_REGISTRY)} names)")


def make(name: str, **kwargs) -> Environment:
  """Builds the environment registered as ``name``.

  Raises:
    ValueError: unknown name; the message names the closest registered names.
  """
  try:
    factory = _REGISTRY[name]
  except KeyError:
    raise ValueError(unknown_env_message(name)) from None
  return factory(**kwargs)
