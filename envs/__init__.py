"""JAX-native environments: LPG's training worlds, chains, and gymnax wrappers.

``envs.make(name, **kwargs)`` builds any registered environment;
``envs.list_envs()`` lists the names and ``envs.SUITES`` / ``envs.suite(name)``
group them ("tabular", "random", "chain", "all" = the 15 training envs,
"minatar", "classic").
"""
from envs import _xla_flags  # noqa: F401  (must precede jax)
from envs import chain, gymnax_envs, random_grid, tabular
from envs.base import Environment, ObsSpec, StepOutput
from envs.registry import list_envs, make, register

for _name, _cfg in chain.CHAIN_CONFIGS.items():
  register(f"chain/{_name}", lambda _cfg=_cfg, _name=_name, **kw: chain.DelayedChain(_cfg, name=f"chain/{_name}", **kw))
for _name, _cfg in tabular.TABULAR_CONFIGS.items():
  register(f"tabular/{_name}", lambda _cfg=_cfg, _name=_name, **kw: tabular.TabularGrid(_cfg, name=f"tabular/{_name}", **kw))
for _name, _cfg in random_grid.RANDOM_GRID_CONFIGS.items():
  register(f"random/{_name}", lambda _cfg=_cfg, _name=_name, **kw: random_grid.RandomGrid(_cfg, name=f"random/{_name}", **kw))
for _name, _spec in gymnax_envs.GYMNAX_SPECS.items():
  register(_name, lambda _spec=_spec, _name=_name, **kw: gymnax_envs.GymnaxEnv(_spec, name=_name, **kw))

SUITES: dict[str, tuple[str, ...]] = {
    "tabular": tuple(f"tabular/{n}" for n in tabular.TABULAR_CONFIGS),
    "random": tuple(f"random/{n}" for n in random_grid.RANDOM_GRID_CONFIGS),
    "chain": tuple(f"chain/{n}" for n in chain.CHAIN_CONFIGS),
    "minatar": tuple(gymnax_envs.MINATAR),
    "classic": tuple(gymnax_envs.CLASSIC),
}
SUITES["all"] = SUITES["tabular"] + SUITES["random"] + SUITES["chain"]
suites = SUITES  # alias


def suite(name: str) -> tuple[str, ...]:
  """Registered names of a suite; ``ValueError`` for an unknown suite."""
  try:
    return SUITES[name]
  except KeyError:
    raise ValueError(f"unknown suite {name!r}; known: {sorted(SUITES)}") from None


from envs.dm_env_adapter import DmEnvAdapter, make_dm_env  # noqa: E402

__all__ = ["Environment", "ObsSpec", "StepOutput", "SUITES", "DmEnvAdapter", "list_envs", "make",
           "make_dm_env", "register", "suite", "suites"]
