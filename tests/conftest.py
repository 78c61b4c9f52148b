"""Shared pytest set-up: the CPU deadlock guard and a compilation cache, before jax."""
import os
import tempfile

# Compiled programs are shared across tests (and CLI runs inside tests) through
# JAX's persistent cache; a fresh directory per session keeps runs independent.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lpg-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import envs  # noqa: E402,F401  (applies envs.xla_guard before jax starts)
