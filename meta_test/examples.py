"""Example ``dm_env`` factories for ``lpg-apply --env package.module:factory``.

``lpg-apply --algo a2c --env meta_test.examples:chain_short`` trains through
the host loop on a ``dm_env.Environment`` (the registered ``chain/short`` seen
through ``envs.make_dm_env``), as a user's own environment would be.  A factory
may take a ``seed`` keyword; ``lpg-apply`` then passes a distinct seed to every
copy it builds.
"""
from envs import make_dm_env


def chain_short(seed: int = 0):
  """A ``dm_env.Environment``: delayed chain, ``N`` drawn from ``seed``."""
  return make_dm_env("chain/short", seed=seed)


def not_an_env():
  """Returns something that is not a ``dm_env.Environment`` (for tests)."""
  return object()


def raising(seed: int = 0):
  """A factory that always raises (for tests of a failing ``--env`` factory)."""
  raise RuntimeError(f"this factory always fails (seed {seed})")
