"""Deprecated alias of ``envs.xla_guard`` (kept importable for older imports)."""
from envs.xla_guard import FLAG, apply

apply()

__all__ = ["FLAG", "apply"]
