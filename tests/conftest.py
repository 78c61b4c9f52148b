"""Shared pytest set-up: the CPU deadlock guard before jax, float32 by default."""
from envs import _xla_flags  # noqa: F401  (sets XLA_FLAGS before jax is imported)
