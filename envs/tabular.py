"""Tabular grid worlds (LPG_SPEC section 5, "Tabular grid worlds").

An agent walks on a small grid holding a few objects.  Each object is
``[reward, probability the episode ends when it is collected, probability per
step that a collected object reappears]`` [firm].

Dynamics of one step (all choices the spec leaves open are marked *chosen*):

1. The agent moves (see ``envs.grid_common`` for the action sets; walls and
   the layout edge block moves).
2. If the agent's new cell holds a *present* object and the action collects
   (always with 5 or 9 actions, only the collect half of the 18 actions), the
   object is collected: its reward is paid, it disappears, and the episode
   terminates with its end probability.  Objects sit on distinct cells, so at
   most one object is collected per step.
3. Every object that was already absent *before* this step reappears at its own
   cell with its reappear probability (*chosen*: an object collected at step
   ``t`` can reappear at the earliest at step ``t+1``, so it is seen absent at
   least once even with probability 1).
4. Episodes are truncated after ``max_episode_steps`` steps.

Per lifetime (``sample_params``): the object cells, distinct free cells drawn
uniformly.  Per episode (``reset``): the agent starts on a uniformly random
free cell that holds no object (*chosen*), with all objects present.

Observation: the spec's one-hot of the full state stored as an ``int32``
index, ``cell * 2**num_objects + presence_bitmask`` (bit ``i`` set when object
``i`` is present), ``cell`` indexing the free cells in row-major order.
``ObsSpec.num_values == num_free_cells * 2**num_objects``.

Layouts (sizes are the walkable area; no wall border is stored):

* ``dense``, ``sparse``, ``long_horizon``: open 11x11, 13x13, 11x11.
* ``longer_horizon``: 7x9 with inner walls (*chosen*, the spec names no layout)
  -- two half-walls split it into four rooms joined by a central corridor row
  and two doorways (52 free cells)::

      ....#....
      ....#....
      .........
      ##.###.##
      .........
      ....#....
      ....#....

* ``long_dense``: the classic four-rooms layout (Sutton, Precup & Singh 1999)
  inside its 11x11 walkable area (104 free cells).

Speed: a step is a handful of integer ops and one table lookup; all random
numbers of a step (including those of the auto-reset) come from one
``jax.random.bits`` call.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import grid_common as gc
from envs.base import ObsSpec

FOUR_ROOMS_11 = (
    ".....#.....",
    ".....#.....",
    "...........",
    ".....#.....",
    ".....#.....",
    "#.####.....",
    ".....###.##",
    ".....#.....",
    ".....#.....",
    "...........",
    ".....#.....",
)

LONGER_HORIZON_7x9 = (
    "....#....",
    "....#....",
    ".........",
    "##.###.##",
    ".........",
    "....#....",
    "....#....",
)


# Object tables and time limits [firm]; layouts [firm sizes, inner walls chosen].
TabularConfig = gc.GridConfig

TABULAR_CONFIGS = {
    "dense": TabularConfig(gc.open_layout(11, 11),
                           gc.objects((2, (1, 0, 0.05)), (1, (-1, 0.5, 0.1)), (1, (-1, 0, 0.5))),
                           500),
    "sparse": TabularConfig(gc.open_layout(13, 13),
                            gc.objects((1, (1, 1, 0)), (1, (-1, 1, 0))), 50),
    "long_horizon": TabularConfig(gc.open_layout(11, 11),
                                  gc.objects((2, (1, 0, 0.01)), (2, (-1, 0.5, 1))), 1000),
    "longer_horizon": TabularConfig(LONGER_HORIZON_7x9,
                                    gc.objects((2, (1, 0.1, 0.01)), (5, (-1, 0.8, 1))), 2000),
    "long_dense": TabularConfig(FOUR_ROOMS_11, gc.objects((4, (1, 0, 0.005))), 2000),
}


class TabularParams(NamedTuple):
  obj_cells: jax.Array    # [num_objects] int32 free-cell index of each object.
  start_cells: jax.Array  # [num_free - num_objects] int32 free cells without an object.


class TabularState(NamedTuple):
  cell: jax.Array  # [] int32 free-cell index of the agent.
  mask: jax.Array  # [] int32 presence bitmask (bit i: object i present).
  time: jax.Array  # [] int32 steps taken in this episode.


class TabularGrid(gc.GridWorld):
  """A tabular grid world; see the module docstring for the exact dynamics.

  Args:
    config: layout, objects and time limit.
    num_actions: 5, 9 (default, the paper's) or 18; see ``envs.grid_common``.
    name: registry name.
  """

  _reset_bits_shape = ()  # one draw: the start cell.

  def __init__(self, config: TabularConfig, num_actions: int = 9, name: str = "tabular"):
    super().__init__(config, num_actions, name)
    if self.num_objects > 20:
      raise ValueError(f"need 1..20 objects (the state index has 2**n masks), "
                       f"got {self.num_objects}")
    self._step_bits = self.num_objects + 1  # reappear draws, end draw.
    self._bit = (1 << np.arange(self.num_objects)).astype(np.int32)

  # ------------------------------------------------------------------ spec
  @property
  def num_cells(self) -> int:
    """Number of free cells the agent can stand on."""
    return self.geometry.num_free

  @property
  def num_states(self) -> int:
    return self.num_cells * 2**self.num_objects

  @property
  def obs_spec(self) -> ObsSpec:
    return ObsSpec(shape=(), dtype=jnp.int32, kind="index", num_values=self.num_states)

  # ---------------------------------------------------------------- params
  def params_from_cells(self, obj_cells) -> TabularParams:
    """Params with the objects on the given free-cell indices (distinct)."""
    obj_cells = np.asarray(obj_cells, np.int32)
    if len(set(obj_cells.tolist())) != self.num_objects:
      raise ValueError("need one distinct cell per object")
    rest = np.setdiff1d(np.arange(self.num_cells), obj_cells).astype(np.int32)
    return TabularParams(jnp.asarray(obj_cells), jnp.asarray(rest))

  def default_params(self) -> TabularParams:
    """Objects on evenly spaced free cells (a fixed, documented layout)."""
    idx = np.linspace(0, self.num_cells - 1, self.num_objects + 2)[1:-1]
    return self.params_from_cells(np.round(idx).astype(np.int32))

  def sample_params(self, key: jax.Array) -> TabularParams:
    perm = jax.random.permutation(key, self.num_cells).astype(jnp.int32)
    return TabularParams(perm[:self.num_objects], jnp.sort(perm[self.num_objects:]))

  # -------------------------------------------------------------- dynamics
  def _reset_from_bits(self, bits: jax.Array, params: TabularParams) -> TabularState:
    num_start = self.num_cells - self.num_objects
    cell = params.start_cells[(bits % np.uint32(num_start)).astype(jnp.int32)]
    return TabularState(cell=cell.astype(jnp.int32),
                        mask=jnp.asarray(2**self.num_objects - 1, jnp.int32),
                        time=jnp.zeros((), jnp.int32))

  def _step_from_bits(self, bits: jax.Array, state: TabularState, action: jax.Array,
                      params: TabularParams):
    """``bits``: ``[num_objects + 1]`` uint32 (reappear draws, end draw)."""
    cell = self._move(state.cell, action, self.geometry.next_free)
    bit = jnp.asarray(self._bit)
    present = (state.mask & bit) != 0
    hit, reward, terminated = self._collect(cell, params.obj_cells, present, action, bits[-1])
    respawn = self._reappears(~present, bits[:-1])  # at the object's own cell.
    hit_bits = jnp.sum(jnp.where(hit, bit, 0))
    resp_bits = jnp.sum(jnp.where(respawn, bit, 0))
    mask = (state.mask & ~hit_bits) | resp_bits
    return TabularState(cell=cell, mask=mask, time=state.time + 1), reward, terminated

  def get_obs(self, state: TabularState, params: TabularParams) -> jax.Array:
    return state.cell * (2**self.num_objects) + state.mask
