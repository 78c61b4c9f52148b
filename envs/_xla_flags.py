"""Guard against a CPU deadlock of jax 0.10.2 inside compiled, vmapped runs.

jax 0.10.2 on CPU can sit idle forever in ``block_until_ready`` when XLA's
concurrency-optimised scheduler is on (seen with gymnax Freeway).  Turning that
scheduler off avoids it.  This module must be imported before ``jax``; every
package of the project imports it first.  A user who names the flag in
``XLA_FLAGS`` keeps their own setting; any other user flags are kept and the
guard is appended.
"""
import os
import sys

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def apply() -> bool:
  """Adds the guard to ``XLA_FLAGS``; returns True if the flag is now set by us."""
  current = os.environ.get("XLA_FLAGS", "")
  if FLAG in current:
    return False
  if "jax" in sys.modules and "jax._src.xla_bridge" in sys.modules:
    # Too late to matter for a backend that is already up; still record it so
    # that subprocesses inherit it.
    pass
  os.environ["XLA_FLAGS"] = (current + " " + FLAG + "=false").strip()
  return True


apply()
