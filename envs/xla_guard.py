"""The one place that guards against a CPU deadlock of XLA inside compiled, vmapped runs.

jax 0.10.2 on CPU can sit idle forever in ``block_until_ready`` when XLA's
concurrency-optimised scheduler is on (seen with gymnax Freeway).  Turning that
scheduler off (``--xla_cpu_enable_concurrency_optimized_scheduler=false`` in
``XLA_FLAGS``) avoids it.  XLA reads ``XLA_FLAGS`` when its CPU backend starts
(the first computation), so the flag must be set before that, not necessarily
before ``import jax``.

Where it is applied: ``apply()`` is called first thing in each package's
``__init__`` (``envs``, ``lpg``, ``meta_train``, ``meta_test``), before any of
them imports jax.  Every entry point imports one of those packages first, so
this covers

* the console scripts (``lpg-meta-train``, ``lpg-apply``, ``lpg-report``:
  their modules live in ``meta_train`` / ``meta_test``),
* the tests (``tests/conftest.py`` imports ``envs`` before anything else),
* a user's own script that does ``import lpg`` (or ``envs``, ...) before its
  first jax computation, and subprocesses, which inherit ``XLA_FLAGS``.

``apply()`` is idempotent.  A user who names the flag in ``XLA_FLAGS`` keeps
their own setting; any other flags are kept and the guard is appended.  A
script that ran a jax computation before importing the project gets a warning
(the backend is already up, so the guard can no longer take effect there).
"""
from __future__ import annotations

import os
import sys
import warnings

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  try:
    return bool(bridge is not None and bridge.backends_are_initialized())
  except Exception:  # a private API: if it changes, assume the backend is not up.
    return False


def apply() -> bool:
  """Adds the guard to ``XLA_FLAGS`` unless the flag is named there already.

  Returns True if this call added it (False on every later call).
  """
  current = os.environ.get("XLA_FLAGS", "")
  if FLAG in current:
    return False
  os.environ["XLA_FLAGS"] = (current + " " + FLAG + "=false").strip()
  if _backend_started():
    warnings.warn("XLA's CPU backend started before the lpg packages were imported, so the "
                  f"deadlock guard {FLAG}=false does not apply in this process; import lpg "
                  "(or set XLA_FLAGS) before the first jax computation", RuntimeWarning,
                  stacklevel=2)
  return True
