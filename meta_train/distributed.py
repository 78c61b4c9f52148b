"""Scale-out on JAX's own engine: one ``Mesh`` axis over every device of every host.

The population (lifetimes, their env states, arms and return statistics) is
sharded along the mesh axis ``"pop"``; the rule, the meta-optimiser state, the
bandit, the step counter and the run key are replicated.  ``jax.jit`` with these
shardings lets the compiler partition the vmapped meta-update and insert the
all-reduce that averages the meta-gradient across devices: no hand-written
collective and no RPC layer.  Several hosts join through
``jax.distributed.initialize`` (coordinator address, process count and id, or
the usual environment variables of the cluster), and then ``jax.devices()``
spans them all.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "pop"
# TrainState fields whose arrays carry a leading population axis (EnvGroups).
POPULATION_FIELDS = ("groups",)


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Joins a multi-host run (no-op for a single process)."""
  if coordinator is None and num_processes is None and process_id is None:
    return
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def check_population(agents_per_env: int, agent_chunk: int, num_devices: int) -> None:
  """Raises ValueError unless each env's lifetimes split evenly over the devices."""
  group = agent_chunk or agents_per_env
  if group % num_devices:
    what = "agent-chunk" if agent_chunk else "agents-per-env"
    sizes = ", ".join(str(num_devices * i) for i in range(1, 5))
    raise ValueError(f"{what} ({group}) must be a multiple of the {num_devices} devices so the "
                     f"population splits evenly; use {sizes}, ...")


def state_shardings(state, mesh: Mesh):
  """A pytree of ``NamedSharding`` matching ``state`` (a TrainState or its shapes)."""
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P(AXIS))
  out = {}
  for field in state._fields:
    value = getattr(state, field)
    spec = sharded if field in POPULATION_FIELDS else replicated
    out[field] = jax.tree_util.tree_map(lambda _: spec, value)
  return type(state)(**out)


def to_host(tree):
  """Brings a (possibly multi-host) sharded pytree to numpy on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def from_host(tree, shardings):
  """Places host numpy arrays onto the devices with the given shardings."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree, shardings)


def is_main_process() -> bool:
  return jax.process_index() == 0
