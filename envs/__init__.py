"""JAX-native environments: LPG's training worlds, chains, and gymnax wrappers.

``envs.make(name, **kwargs)`` builds any registered environment;
``envs.list_envs()`` lists the names and ``envs.SUITES`` / ``envs.suite(name)``
group them ("tabular", "random", "chain", "all" = the 15 training envs,
"minatar", "classic", and "procgen" / "procgen_val": the
procedurally generated families of ``envs.procgen``, training and held-out
validation levels).  The table itself is ``envs.registry.REGISTRY``.
"""
from envs import xla_guard

xla_guard.apply()  # first, before jax starts (see envs.xla_guard)

from envs.base import Environment, ObsSpec, StepOutput  # noqa: E402
from envs.dm_env_adapter import DmEnvAdapter, make_dm_env  # noqa: E402
from envs.registry import REGISTRY, SUITES, list_envs, make, suite  # noqa: E402

suites = SUITES  # alias

__all__ = ["Environment", "ObsSpec", "StepOutput", "REGISTRY", "SUITES", "DmEnvAdapter",
           "list_envs", "make", "make_dm_env", "suite", "suites"]
