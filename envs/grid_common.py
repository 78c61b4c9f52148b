"""The grid world shared by the tabular and the random grids.

``GridWorld`` holds what both kinds have in common: the config (layout,
objects, time limit), movement, collection, the reappearance draws, and a
``step`` that takes all of its random numbers (the transition's and the
auto-reset's) from one ``jax.random.bits`` call and applies the base class's
``auto_reset``.  ``envs.tabular`` and ``envs.random_grid`` add only their
state, their observation and where objects (re)appear.

The static tables here are computed once with numpy when an environment is
built and enter the jitted step as constants; nothing in them changes per
lifetime.

Layouts are lists of strings over the *walkable area* of the spec's tables:
``"."`` is a free cell and ``"#"`` an inner wall cell.  Moving off the layout
or into a wall leaves the agent where it is (the grid behaves as if surrounded
by a wall border, which is not part of the observation).

Action sets (``num_actions``), chosen by a constructor argument [ported: the
paper's 9 and 18; 5 is the common simplification]:

* ``5``: stay, up, right, down, left; objects are collected on contact.
* ``9`` (default): stay and the 8 king moves (up, up-right, right, down-right,
  down, down-left, left, up-left); objects collected on contact.
* ``18``: actions ``0..8`` are the 9 moves *without* collecting, ``9..17`` the
  same moves *with* collecting; an object is collected only when the agent
  ends a collect action on its cell.

A diagonal move succeeds whenever its target cell is free (no corner-cutting
rule).
"""
from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from envs.base import Environment, PyTree, StepOutput

# (d_row, d_col) of the 9 king moves; index 0 is "stay".
_KING_MOVES = ((0, 0), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
_CROSS_MOVES = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1))

ACTION_SETS = (5, 9, 18)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object: ``[reward, end probability, reappear probability]`` [firm].

  Attributes:
    reward: reward when collected.
    end_prob: probability the episode terminates when it is collected.
    respawn_prob: probability per step that a collected object reappears.
  """
  reward: float
  end_prob: float
  respawn_prob: float


def objects(*groups: tuple[int, tuple[float, float, float]]) -> tuple[ObjectSpec, ...]:
  """``objects((2, (1, 0, .05)), (1, (-1, .5, .1)))`` -> flat tuple of ObjectSpec."""
  out = []
  for count, (r, e, p) in groups:
    out.extend([ObjectSpec(float(r), float(e), float(p))] * count)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class GridConfig:
  """Static description of a grid world (tabular or random).

  Attributes:
    layout: rows of ``"."`` (free) and ``"#"`` (wall) over the walkable area.
    objects: the objects.
    max_episode_steps: time limit.
  The provenance of each value ([firm], [ported], *chosen*) is stated where the
  configs are listed (``envs.tabular``, ``envs.random_grid``).
  """
  layout: tuple[str, ...]
  objects: tuple[ObjectSpec, ...]
  max_episode_steps: int


def open_layout(height: int, width: int) -> tuple[str, ...]:
  return tuple("." * width for _ in range(height))


def moves_of(num_actions: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(move_of_action [A] int, collect_of_action [A] bool)``."""
  if num_actions == 5:
    return np.arange(5), np.ones(5, bool)
  if num_actions == 9:
    return np.arange(9), np.ones(9, bool)
  if num_actions == 18:
    return np.tile(np.arange(9), 2), np.repeat([False, True], 9)
  raise ValueError(f"num_actions must be one of {ACTION_SETS}, got {num_actions}")


def move_deltas(num_actions: int) -> tuple[tuple[int, int], ...]:
  return _CROSS_MOVES if num_actions == 5 else _KING_MOVES


@dataclasses.dataclass(frozen=True)
class GridGeometry:
  """Numpy tables of one layout and action set.

  Attributes:
    height, width: size of the layout.
    free_cells: ``[F]`` flat grid indices (``row * width + col``) of free cells.
    cell_of_grid: ``[H*W]`` free-cell index of each grid index (-1 on walls).
    next_grid: ``[H*W, M]`` grid index after each move (walls map to themselves).
    next_free: ``[F, M]`` free-cell index after each move.
    move_of_action, collect_of_action: ``[A]`` move index and collect flag.
  """
  height: int
  width: int
  free_cells: np.ndarray
  cell_of_grid: np.ndarray
  next_grid: np.ndarray
  next_free: np.ndarray
  move_of_action: np.ndarray
  collect_of_action: np.ndarray

  @property
  def num_free(self) -> int:
    return int(self.free_cells.shape[0])


def build_geometry(layout: tuple[str, ...], num_actions: int) -> GridGeometry:
  """Parses ``layout`` and builds the move tables for ``num_actions``."""
  height, width = len(layout), len(layout[0])
  if any(len(row) != width for row in layout):
    raise ValueError("layout rows must have equal length")
  wall = np.array([[c == "#" for c in row] for row in layout], bool)
  if not set("".join(layout)) <= {".", "#"}:
    raise ValueError("layout may only contain '.' and '#'")
  move_of_action, collect_of_action = moves_of(num_actions)
  deltas = move_deltas(num_actions)
  next_grid = np.zeros((height * width, len(deltas)), np.int32)
  for r in range(height):
    for c in range(width):
      for m, (dr, dc) in enumerate(deltas):
        nr, nc = r + dr, c + dc
        ok = 0 <= nr < height and 0 <= nc < width and not wall[nr, nc] and not wall[r, c]
        next_grid[r * width + c, m] = nr * width + nc if ok else r * width + c
  free_cells = np.flatnonzero(~wall.reshape(-1)).astype(np.int32)
  cell_of_grid = -np.ones(height * width, np.int32)
  cell_of_grid[free_cells] = np.arange(len(free_cells), dtype=np.int32)
  next_free = cell_of_grid[next_grid[free_cells]]
  return GridGeometry(height, width, free_cells, cell_of_grid, next_grid,
                      next_free.astype(np.int32), move_of_action.astype(np.int32),
                      collect_of_action)


def bernoulli_thresholds(probs) -> tuple[np.ndarray, np.ndarray]:
  """Integer thresholds for Bernoulli draws from raw uint32 random bits.

  Returns ``(threshold [n] uint32, always [n] bool)``; the event is
  ``(bits < threshold) | always``, exact for probabilities 0 and 1 and within
  2**-32 otherwise.  Comparing raw bits with a threshold avoids float
  conversions in the step.
  """
  probs = np.asarray(probs, np.float64)
  thr = np.minimum(np.round(probs * 2.0**32), 2.0**32 - 1).astype(np.uint32)
  return thr, probs >= 1.0


class GridWorld(Environment):
  """Base of the tabular and random grid worlds (see the module docstring).

  Subclasses implement ``_reset_from_bits``, ``_step_from_bits``, ``get_obs``,
  ``obs_spec`` and ``default_params`` and set ``_step_bits`` (the number of
  uint32 draws of one transition, the end draw last) and
  ``_reset_bits_shape`` (the shape of the draws of one reset).

  Args:
    config: layout, objects and time limit.
    num_actions: 5, 9 (default, the paper's) or 18; see the module docstring.
    name: registry name.
  """

  _step_bits: int
  _reset_bits_shape: tuple[int, ...]

  def __init__(self, config: GridConfig, num_actions: int = 9, name: str = "grid"):
    self.config = config
    self.name = name
    self._num_actions = int(num_actions)
    self.geometry = build_geometry(config.layout, self._num_actions)
    n = len(config.objects)
    if not 1 <= n < self.geometry.num_free:
      raise ValueError(f"need 1 <= number of objects < number of free cells "
                       f"({self.geometry.num_free}), got {n}")
    self.num_objects = n
    self.rewards = np.array([o.reward for o in config.objects], np.float32)
    self.end_probs = np.array([o.end_prob for o in config.objects], np.float64)
    self.respawn_probs = np.array([o.respawn_prob for o in config.objects], np.float64)
    self._end_thr, self._end_always = bernoulli_thresholds(self.end_probs)
    self._resp_thr, self._resp_always = bernoulli_thresholds(self.respawn_probs)

  @property
  def num_actions(self) -> int:
    return self._num_actions

  @property
  def max_episode_steps(self) -> int:
    return self.config.max_episode_steps

  # ------------------------------------------------------- shared dynamics
  def _move(self, pos: jax.Array, action: jax.Array, table: np.ndarray) -> jax.Array:
    """``[]`` position after ``action`` through ``table`` ``[positions, moves]``."""
    move = jnp.asarray(self.geometry.move_of_action)[action]
    return jnp.asarray(table.reshape(-1))[pos * table.shape[1] + move]

  def _collect(self, pos: jax.Array, obj_pos: jax.Array, present: jax.Array,
               action: jax.Array, end_bits: jax.Array):
    """Collection at ``pos``: ``(hit [n] bool, reward [] float32, terminated [] bool)``.

    ``obj_pos``/``present``: ``[n]`` object positions (same indexing as ``pos``)
    and presence; ``end_bits``: ``[]`` uint32, the end draw.
    """
    hit = (obj_pos == pos) & present
    if self._num_actions == 18:
      hit = hit & (action >= 9)
    reward = jnp.sum(jnp.where(hit, jnp.asarray(self.rewards), 0.0))
    ends = (end_bits < jnp.asarray(self._end_thr)) | jnp.asarray(self._end_always)
    return hit, reward, jnp.any(hit & ends)

  def _reappears(self, absent: jax.Array, bits: jax.Array) -> jax.Array:
    """``[n]`` bool: objects absent before the step that reappear (``bits`` ``[n]``)."""
    return absent & ((bits < jnp.asarray(self._resp_thr)) | jnp.asarray(self._resp_always))

  @abc.abstractmethod
  def _reset_from_bits(self, bits: jax.Array, params: PyTree) -> PyTree:
    """First state of an episode from ``bits`` of shape ``_reset_bits_shape``."""

  @abc.abstractmethod
  def _step_from_bits(self, bits: jax.Array, state: PyTree, action: jax.Array,
                      params: PyTree) -> tuple[PyTree, jax.Array, jax.Array]:
    """``step_env`` from ``bits`` ``[_step_bits]`` uint32."""

  # ------------------------------------------------------------ public API
  def reset_env(self, key: jax.Array, params: PyTree) -> PyTree:
    return self._reset_from_bits(jax.random.bits(key, self._reset_bits_shape, jnp.uint32),
                                 params)

  def step_env(self, key: jax.Array, state: PyTree, action: jax.Array, params: PyTree):
    bits = jax.random.bits(key, (self._step_bits,), jnp.uint32)
    return self._step_from_bits(bits, state, jnp.asarray(action, jnp.int32), params)

  def step(self, key: jax.Array, state: PyTree, action: jax.Array,
           params: PyTree) -> StepOutput:
    """Same semantics as ``Environment.step``, with one random-bits call."""
    num_reset = math.prod(self._reset_bits_shape)
    bits = jax.random.bits(key, (self._step_bits + num_reset,), jnp.uint32)
    next_state, reward, terminated = self._step_from_bits(
        bits[:self._step_bits], state, jnp.asarray(action, jnp.int32), params)
    reset_bits = bits[self._step_bits:].reshape(self._reset_bits_shape)
    return self.auto_reset(next_state, reward, terminated,
                           self._reset_from_bits(reset_bits, params), params)
