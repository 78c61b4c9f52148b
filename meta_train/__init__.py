"""Meta-training: the staggered population, the bandit, the compiled meta-update, the job CLI."""
from envs import _xla_flags  # noqa: F401  (must precede jax)
