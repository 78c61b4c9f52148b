"""Random grid worlds (LPG_SPEC section 5, "Random grid worlds").

Same objects and moves as the tabular worlds (``envs.tabular``,
``envs.grid_common``), but object positions are random *per episode* and the
observation is an image, so the agent cannot memorise a table.

Dynamics of one step (choices the spec leaves open are marked *chosen*):

1. The agent moves (walls and the layout edge block moves).
2. A present object on the agent's new cell is collected (always with 5 or 9
   actions, only by the collect half of the 18 actions): its reward is paid, it
   disappears, and the episode ends with its end probability.
3. Every object that was absent *before* this step reappears with its
   reappear probability at a uniformly random free cell (*chosen*: if that
   cell holds the agent or another present object the reappearance is
   deferred to a later step, so objects never overlap).
4. Episodes are truncated after ``max_episode_steps`` steps.

Reset (every episode): the agent and all objects on distinct uniformly random
free cells, all objects present.  There are no per-lifetime parameters
(``sample_params`` returns an empty ``RandomGridParams``).

Observation: a binary ``uint8`` image ``[H, W, num_object_types + 1]``
(channels-last): one channel per object *type* (objects with identical
``[reward, end, reappear]`` share a type, in order of first appearance), and
the agent in the last channel.  ``H, W`` is the walkable area; walls are static
per environment and are *not* drawn (*chosen*; the only env with walls,
``small``, has them at fixed cells).

Layouts: ``dense``, ``long_horizon``, ``very_dense`` open 11x11;
``small_sparse`` open 5x7; ``small`` 5x7 with 2 wall cells (*chosen* positions:
rows 1 and 3 of the middle column)::

    .......
    ...#...
    .......
    ...#...
    .......
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import grid_common as gc
from envs.base import ObsSpec

SMALL_5x7 = (
    ".......",
    "...#...",
    ".......",
    "...#...",
    ".......",
)


# Object tables and time limits [ported]; wall positions of ``small`` chosen.
RandomGridConfig = gc.GridConfig

_DENSE = gc.objects((2, (1, 0, 0.05)), (1, (-1, 0.5, 0.1)), (1, (-1, 0, 0.5)))
_LONG = gc.objects((2, (1, 0, 0.01)), (2, (-1, 0.5, 1)))

RANDOM_GRID_CONFIGS = {
    "dense": RandomGridConfig(gc.open_layout(11, 11), _DENSE, 500),
    "long_horizon": RandomGridConfig(gc.open_layout(11, 11), _LONG, 1000),
    "small": RandomGridConfig(SMALL_5x7, gc.objects((2, (1, 0, 0.05)), (2, (-1, 0.5, 0.1))), 500),
    "small_sparse": RandomGridConfig(gc.open_layout(5, 7),
                                     gc.objects((1, (1, 1, 1)), (2, (-1, 1, 1))), 50),
    "very_dense": RandomGridConfig(gc.open_layout(11, 11), gc.objects((1, (1, 0, 1))), 2000),
}


class RandomGridParams(NamedTuple):
  """Nothing is fixed per lifetime; kept as a (leafless) pytree for uniformity."""


class RandomGridState(NamedTuple):
  agent: jax.Array    # [] int32 grid index (row * W + col) of the agent.
  obj_pos: jax.Array  # [num_objects] int32 grid index of each object.
  mask: jax.Array     # [num_objects] bool, object present.
  time: jax.Array     # [] int32 steps taken in this episode.


class RandomGrid(gc.GridWorld):
  """A random grid world; see the module docstring for the exact dynamics.

  Args:
    config: layout, objects and time limit.
    num_actions: 5, 9 (default) or 18; see ``envs.grid_common``.
    name: registry name.
  """

  def __init__(self, config: RandomGridConfig, num_actions: int = 9, name: str = "random"):
    super().__init__(config, num_actions, name)
    n = self.num_objects
    self._step_bits = 2 * n + 1  # reappear draws, reappear cells, end draw.
    self._reset_bits_shape = (n + 1,)  # agent and object cells.
    kinds = []
    for o in config.objects:
      if o not in kinds:
        kinds.append(o)
    self.object_types = np.array([kinds.index(o) for o in config.objects], np.int32)
    self.num_object_types = len(kinds)

  # ------------------------------------------------------------------ spec
  @property
  def obs_spec(self) -> ObsSpec:
    g = self.geometry
    return ObsSpec(shape=(g.height, g.width, self.num_object_types + 1), dtype=jnp.uint8,
                   kind="image")

  def default_params(self) -> RandomGridParams:
    return RandomGridParams()

  # -------------------------------------------------------------- dynamics
  def _reset_from_bits(self, bits: jax.Array, params: RandomGridParams) -> RandomGridState:
    """``bits``: ``[num_objects + 1]`` uint32 -> agent and objects on distinct free cells.

    Draw ``k`` is uniform over the ``F - k`` cells not chosen yet: a uniform
    ``r`` in ``[0, F - k)`` is shifted past the already chosen free-cell
    indices (fixed point of ``r + #{chosen <= .}``, reached in ``k`` rounds).
    """
    del params
    num_free = self.geometry.num_free
    chosen = []
    for k in range(self.num_objects + 1):
      r = (bits[k] % np.uint32(num_free - k)).astype(jnp.int32)
      x = r
      for _ in range(k):
        x = r + sum((c <= x).astype(jnp.int32) for c in chosen)
      chosen.append(x)
    free = jnp.asarray(self.geometry.free_cells)
    cells = free[jnp.stack(chosen)]
    return RandomGridState(agent=cells[0], obj_pos=cells[1:],
                           mask=jnp.ones((self.num_objects,), jnp.bool_),
                           time=jnp.zeros((), jnp.int32))

  def _step_from_bits(self, bits: jax.Array, state: RandomGridState, action: jax.Array,
                      params: RandomGridParams):
    """``bits``: ``[2 * num_objects + 1]`` uint32 (reappear draws, cells, end draw)."""
    del params
    n = self.num_objects
    agent = self._move(state.agent, action, self.geometry.next_grid)
    hit, reward, terminated = self._collect(agent, state.obj_pos, state.mask, action, bits[2 * n])
    try_respawn = self._reappears(~state.mask, bits[:n])
    free = jnp.asarray(self.geometry.free_cells)
    new_cells = free[(bits[n:2 * n] % np.uint32(self.geometry.num_free)).astype(jnp.int32)]
    mask, pos = self._place(state.mask & ~hit, state.obj_pos, try_respawn, new_cells, agent)
    new_state = RandomGridState(agent=agent, obj_pos=pos, mask=mask, time=state.time + 1)
    return new_state, reward, terminated

  def _place(self, mask, pos, try_respawn, new_cells, agent):
    """Reappearing objects take ``new_cells`` unless the agent or a present object is there.

    All ``[n]`` except ``agent`` ``[]``; returns the new ``(mask, pos)``.
    """
    if self.num_objects == 1:
      ok = try_respawn & (new_cells != agent)
      return mask | ok, jnp.where(ok, new_cells, pos)
    # Sequential over objects (n is small and static) so that two objects
    # reappearing in the same step cannot land on the same cell.
    for i in range(self.num_objects):
      blocked = (new_cells[i] == agent) | jnp.any(mask & (pos == new_cells[i]))
      ok = try_respawn[i] & ~blocked
      mask = mask.at[i].set(mask[i] | ok)
      pos = pos.at[i].set(jnp.where(ok, new_cells[i], pos[i]))
    return mask, pos

  def get_obs(self, state: RandomGridState, params: RandomGridParams) -> jax.Array:
    g = self.geometry
    cells = jnp.arange(g.height * g.width, dtype=jnp.int32)
    channels = []
    for t in range(self.num_object_types):
      members = np.flatnonzero(self.object_types == t)
      ch = jnp.zeros(cells.shape, jnp.bool_)
      for j in members:
        ch = ch | ((cells == state.obj_pos[j]) & state.mask[j])
      channels.append(ch)
    channels.append(cells == state.agent)
    img = jnp.stack(channels, axis=-1).astype(jnp.uint8)
    return img.reshape(g.height, g.width, self.num_object_types + 1)
