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

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import grid_common as gc
from envs.base import Environment, ObsSpec, StepOutput

SMALL_5x7 = (
    ".......",
    "...#...",
    ".......",
    "...#...",
    ".......",
)


@dataclasses.dataclass(frozen=True)
class RandomGridConfig:
  """Static description of a random grid world.

  Attributes:
    layout: rows of ``"."``/``"#"`` over the walkable area [ported sizes; wall
      positions of ``small`` chosen].
    objects: the objects [ported].
    max_episode_steps: time limit [ported].
  """
  layout: tuple[str, ...]
  objects: tuple[gc.ObjectSpec, ...]
  max_episode_steps: int


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


class RandomGrid(Environment):
  """A random grid world; see the module docstring for the exact dynamics.

  Args:
    config: layout, objects and time limit.
    num_actions: 5, 9 (default) or 18; see ``envs.grid_common``.
    name: registry name.
  """

  def __init__(self, config: RandomGridConfig, num_actions: int = 9, name: str = "random"):
    self.config = config
    self.name = name
    self._num_actions = int(num_actions)
    self.geometry = gc.build_geometry(config.layout, self._num_actions)
    n = len(config.objects)
    if not 1 <= n < self.geometry.num_free:
      raise ValueError("need 1 <= num_objects < number of free cells")
    self.num_objects = n
    kinds = []
    for o in config.objects:
      if o not in kinds:
        kinds.append(o)
    self.object_types = np.array([kinds.index(o) for o in config.objects], np.int32)
    self.num_object_types = len(kinds)
    self.rewards = np.array([o.reward for o in config.objects], np.float32)
    self._end_thr, self._end_always = gc.bernoulli_thresholds([o.end_prob for o in config.objects])
    self._resp_thr, self._resp_always = gc.bernoulli_thresholds(
        [o.respawn_prob for o in config.objects])
    self._num_moves = self.geometry.next_grid.shape[1]

  # ------------------------------------------------------------------ spec
  @property
  def num_actions(self) -> int:
    return self._num_actions

  @property
  def obs_spec(self) -> ObsSpec:
    g = self.geometry
    return ObsSpec(shape=(g.height, g.width, self.num_object_types + 1), dtype=jnp.uint8,
                   kind="image")

  @property
  def max_episode_steps(self) -> int:
    return self.config.max_episode_steps

  def default_params(self) -> RandomGridParams:
    return RandomGridParams()

  # -------------------------------------------------------------- dynamics
  def _num_reset_bits(self) -> int:
    return self.num_objects + 1

  def _reset_from_bits(self, bits: jax.Array) -> RandomGridState:
    """``bits``: ``[num_objects + 1]`` uint32 -> agent and objects on distinct free cells.

    Draw ``k`` is uniform over the ``F - k`` cells not chosen yet: a uniform
    ``r`` in ``[0, F - k)`` is shifted past the already chosen free-cell
    indices (fixed point of ``r + #{chosen <= .}``, reached in ``k`` rounds).
    """
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

  def _num_step_bits(self) -> int:
    return 2 * self.num_objects + 1

  def _step_from_bits(self, bits: jax.Array, state: RandomGridState, action: jax.Array):
    """``bits``: ``[2 * num_objects + 1]`` uint32 (reappear draws, cells, end draw)."""
    n = self.num_objects
    action = jnp.asarray(action, jnp.int32)
    move = jnp.asarray(self.geometry.move_of_action)[action]
    table = jnp.asarray(self.geometry.next_grid.reshape(-1))
    agent = table[state.agent * self._num_moves + move]
    hit = (state.obj_pos == agent) & state.mask
    if self._num_actions == 18:
      hit = hit & (action >= 9)
    reward = jnp.sum(jnp.where(hit, jnp.asarray(self.rewards), 0.0))
    ends = (bits[2 * n] < jnp.asarray(self._end_thr)) | jnp.asarray(self._end_always)
    terminated = jnp.any(hit & ends)
    try_respawn = (~state.mask) & ((bits[:n] < jnp.asarray(self._resp_thr))
                                   | jnp.asarray(self._resp_always))
    free = jnp.asarray(self.geometry.free_cells)
    new_cells = free[(bits[n:2 * n] % np.uint32(self.geometry.num_free)).astype(jnp.int32)]
    mask = state.mask & ~hit
    pos = state.obj_pos
    if n == 1:
      ok = try_respawn & (new_cells != agent)
      mask = mask | ok
      pos = jnp.where(ok, new_cells, pos)
    else:
      # Sequential over objects (n is small and static) so that two objects
      # reappearing in the same step cannot land on the same cell.
      for i in range(n):
        blocked = (new_cells[i] == agent) | jnp.any(mask & (pos == new_cells[i]))
        ok = try_respawn[i] & ~blocked
        mask = mask.at[i].set(mask[i] | ok)
        pos = pos.at[i].set(jnp.where(ok, new_cells[i], pos[i]))
    new_state = RandomGridState(agent=agent, obj_pos=pos, mask=mask, time=state.time + 1)
    return new_state, reward, terminated

  def reset_env(self, key: jax.Array, params: RandomGridParams) -> RandomGridState:
    del params
    return self._reset_from_bits(jax.random.bits(key, (self._num_reset_bits(),), jnp.uint32))

  def step_env(self, key, state: RandomGridState, action, params: RandomGridParams):
    del params
    bits = jax.random.bits(key, (self._num_step_bits(),), jnp.uint32)
    return self._step_from_bits(bits, state, action)

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

  def step(self, key: jax.Array, state: RandomGridState, action: jax.Array,
           params: RandomGridParams) -> StepOutput:
    """Same semantics as ``Environment.step``, with one random-bits call."""
    ns, nr = self._num_step_bits(), self._num_reset_bits()
    bits = jax.random.bits(key, (ns + nr,), jnp.uint32)
    next_state, reward, terminated = self._step_from_bits(bits[:ns], state, action)
    truncated = (next_state.time >= self.max_episode_steps) & ~terminated
    done = terminated | truncated
    reset_state = self._reset_from_bits(bits[ns:])
    state_out = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), reset_state,
                                       next_state)
    return StepOutput(obs=self.get_obs(state_out, params), state=state_out,
                      reward=reward.astype(jnp.float32), terminated=terminated,
                      truncated=truncated)
