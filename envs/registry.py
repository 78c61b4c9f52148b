"""Name -> environment factory: one literal, read-only table for meta-training and meta-testing.

``REGISTRY`` is built once from the environment modules' config tables; nothing
adds to it at import time or later (a user's own environment is passed as
``module:callable`` to the command lines instead).  ``SUITES`` names groups of
registered environments.
"""
from __future__ import annotations

import difflib
import functools
import types
from typing import Callable, Mapping

from envs import chain, gymnax_envs, procgen, random_grid, tabular
from envs.base import Environment

# (name prefix, config table, environment class): every registered family.
_FAMILIES = (
    ("chain/", chain.CHAIN_CONFIGS, chain.DelayedChain),
    ("tabular/", tabular.TABULAR_CONFIGS, tabular.TabularGrid),
    ("random/", random_grid.RANDOM_GRID_CONFIGS, random_grid.RandomGrid),
    ("procgen/", procgen.PROCGEN_CONFIGS, procgen.make_family),
    ("", gymnax_envs.GYMNAX_SPECS, gymnax_envs.GymnaxEnv),
)

REGISTRY: Mapping[str, Callable[..., Environment]] = types.MappingProxyType({
    prefix + name: functools.partial(cls, config, name=prefix + name)
    for prefix, table, cls in _FAMILIES for name, config in table.items()})
"""``name -> factory(**kwargs) -> Environment`` (kwargs such as ``num_actions``)."""

_TRAINING_SUITES = {
    "tabular": tuple(f"tabular/{n}" for n in tabular.TABULAR_CONFIGS),
    "random": tuple(f"random/{n}" for n in random_grid.RANDOM_GRID_CONFIGS),
    "chain": tuple(f"chain/{n}" for n in chain.CHAIN_CONFIGS),
}
SUITES: dict[str, tuple[str, ...]] = {
    **_TRAINING_SUITES,
    "all": sum(_TRAINING_SUITES.values(), ()),
    "minatar": tuple(gymnax_envs.MINATAR),
    "classic": tuple(gymnax_envs.CLASSIC),
    "procgen": procgen.TRAIN_NAMES,
    "procgen_val": procgen.VAL_NAMES,
}
"""Suite name -> registered names; ``"all"`` is the 15 meta-training environments,
``"procgen"`` the procedurally generated families (a new level per lifetime) and
``"procgen_val"`` the same families' held-out validation levels (``envs.procgen``)."""


def list_envs(prefix: str | None = None) -> list[str]:
  """Sorted registered names, optionally only those starting with ``prefix``."""
  return sorted(n for n in REGISTRY if not prefix or n.startswith(prefix))


def _close_matches(name: str, known) -> list[str]:
  close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.4)
  if not close:
    lowered = {n.lower(): n for n in known}
    close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3,
                                                            cutoff=0.4)]
  return close


def unknown_env_message(name: str) -> str:
  """One line naming ``name`` as unknown, with the closest registered names."""
  close = _close_matches(name, REGISTRY)
  hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return (f"unknown environment {name!r}{hint} "
          f"(see envs.list_envs() for all {len(REGISTRY)} names)")


def make(name: str, **kwargs) -> Environment:
  """Builds the environment registered as ``name``.

  Raises:
    ValueError: unknown name; the message names the closest registered names.
  """
  try:
    factory = REGISTRY[name]
  except KeyError:
    raise ValueError(unknown_env_message(name)) from None
  return factory(**kwargs)


def suite(name: str) -> tuple[str, ...]:
  """Registered names of a suite; ``ValueError`` (with close matches) for an unknown suite."""
  try:
    return SUITES[name]
  except KeyError:
    close = _close_matches(name, SUITES)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown suite {name!r}; {hint}known: {sorted(SUITES)}") from None
