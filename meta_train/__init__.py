"""Meta-training: the staggered population, the bandit, the compiled meta-update, the job CLI."""
from envs import xla_guard

xla_guard.apply()  # first, before jax starts (see envs.xla_guard)
