"""Worker processes for running independent compiled runs side by side on one host.

On a CPU host XLA spreads one run over every core, but MinAtar-sized runs do not use them
well: two single-threaded processes, one per core, did 1.8x the work of one process with
two threads on the 2-core CI machine (A2C on Seaquest, 12.0k + 11.9k steps/s against 13.2k).
``pool(jobs)`` gives a process pool whose workers each run XLA on one thread
(``single_thread_flags``); ``jobs == 1`` gives an in-process executor, so a caller has
one code path and the default keeps XLA's own threading.

Workers are started with ``spawn`` (jax is not fork-safe) and set ``XLA_FLAGS`` in their
initialiser, which runs before their first jax computation (XLA reads the flags when its
backend starts, not at ``import jax``).  On an accelerator host each worker gets a share
of the device's memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``, unless the user set it).  On
Linux a worker is killed with its parent (``PR_SET_PDEATHSIG``): stopping ``lpg-report``
stops its runs; ``--resume`` redoes the unfinished ones.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys

# XLA's CPU backend on one thread.  (Every XLA flag starts with "--": XLA reads a first
# token without it as a file of flags and aborts, and ignores one after a flag.)
SINGLE_THREAD = ("--xla_cpu_multi_thread_eigen=false",)
MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"


def single_thread_flags(flags: str) -> str:
  """``flags`` (an ``XLA_FLAGS`` value) with XLA's CPU backend held to one thread; a flag
  the user named already keeps the user's value."""
  out = flags.split()
  for flag in SINGLE_THREAD:
    name = flag.split("=")[0]
    if not any(f.split("=")[0] == name for f in out):
      out.append(flag)
  return " ".join(out)


def _die_with_parent(parent: int) -> None:
  """Asks Linux to send this process SIGTERM when its parent dies (``prctl``
  ``PR_SET_PDEATHSIG``), so a killed ``lpg-report`` leaves no worker running a run on; exits
  at once if the parent (pid ``parent``) died before the request took effect."""
  if not sys.platform.startswith("linux"):
    return
  try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:
    os._exit(1)


def _init_worker(jobs: int, parent: int) -> None:
  """Runs first in every worker: dies with its parent, one XLA thread, a share of an
  accelerator's memory."""
  _die_with_parent(parent)
  os.environ["XLA_FLAGS"] = single_thread_flags(os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault(MEM_FRACTION, f"{0.9 / jobs:.3f}")


class _InProcess(cf.Executor):
  """``concurrent.futures.Executor`` that runs each call at once in this process; an error
  is raised by ``submit`` itself, so nothing queued after a failed run still runs."""

  def submit(self, fn, /, *args, **kwargs):
    future = cf.Future()
    future.set_result(fn(*args, **kwargs))
    return future


def pool(jobs: int) -> cf.Executor:
  """An executor running ``jobs`` calls at a time: in this process for ``jobs == 1``, else
  in spawned single-threaded worker processes.  Submitted functions and their arguments
  must be picklable (module-level functions, plain data)."""
  if jobs < 1:
    raise ValueError(f"jobs must be >= 1, got {jobs}")
  if jobs == 1:
    return _InProcess()
  return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init_worker, initargs=(jobs, os.getpid()))
