"""JAX-native environments: LPG's training worlds, chains, and gymnax wrappers."""
from envs import _xla_flags  # noqa: F401  (must precede jax)
from envs import chain
from envs.base import Environment, ObsSpec, StepOutput
from envs.registry import list_envs, make, register

for _name, _cfg in chain.CHAIN_CONFIGS.items():
  register(f"chain/{_name}", lambda _cfg=_cfg, _name=_name, **kw: chain.DelayedChain(_cfg, name=f"chain/{_name}", **kw))

__all__ = ["Environment", "ObsSpec", "StepOutput", "list_envs", "make", "register"]
