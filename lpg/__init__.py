"""LPG core: the update rule, agent networks, inner update, meta-objective, artifacts."""
from envs import _xla_flags  # noqa: F401  (must precede jax)
