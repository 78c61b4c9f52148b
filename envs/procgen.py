"""Procedurally generated training worlds: families that draw a new level per lifetime.

A *family* is an ``Environment`` whose ``sample_params(key)`` draws a whole
level -- layout, objects, rewards, probabilities, episode limit, action
meanings -- inside fixed maximum array shapes (grids are padded to
``max_height x max_width`` and objects to ``max_objects``, with masks), so one
compiled function serves every level and the observation shape is fixed per
family.  The meta-training job already calls ``sample_params`` once per
lifetime, so ``--envs procgen/tabular`` means "a new level every lifetime"
(GROOVE, LPG_SPEC section 9).  The 15 named worlds are unchanged.

Registered names (``envs.registry``): ``procgen/tabular``, ``procgen/random``,
``procgen/chain`` (suite ``procgen``) draw *training* levels;
``procgen/tabular_val``, ``procgen/random_val``, ``procgen/chain_val`` (suite
``procgen_val``) draw *held-out validation* levels of the same distributions.
Overrides go through ``envs.make``: ``envs.make("procgen/tabular",
num_levels=1024, num_actions=5)``.

Level seeds and splits
----------------------
Every level is a pure function of one integer, its *level seed*
(``family.level(seed)``; ``params.level_seed`` records it).  ``sample_params``
draws an index ``i`` (uniform in ``[0, 2**30)``, or in ``[0, num_levels)`` when
the config's ``num_levels`` is set -- GROOVE's finite level count) and uses
``seed = 2 * i + split`` with ``split`` 0 for ``"train"`` and 1 for ``"val"``:
training and validation seeds are disjoint by construction (even / odd), and
the level itself is drawn from ``jax.random.PRNGKey(seed)``.

Grid families (``GridFamilyConfig``; defaults)
-----------------------------------------------
Both grid families share the level distribution; ``procgen/tabular`` fixes the
objects' cells per level (index observation, as ``envs.tabular``),
``procgen/random`` re-draws them every episode (image observation, as
``envs.random_grid``).  Per level:

* size: height and width uniform integers in ``[4, 9]`` (walkable area; the
  rest of the ``9 x 9`` canvas is wall).
* walls: a density ``rho ~ U[0, 0.3]``; each cell is a wall with probability
  ``rho``; only the 4-connected component of a uniformly chosen free cell is
  kept (cells cut off become walls), so every free cell is reachable; if that
  component has fewer than ``max_objects + 2`` cells the level has no inner
  walls.
* objects: a count uniform in ``[1, 4]`` (``max_objects``) on distinct free
  cells, one free 4-neighbour of object 0 left empty (so object 0 can always
  be collected).  Object ``i``'s reward is ``s_i * m_i * scale`` with magnitude
  ``m_i ~ U[0.2, 1]``, sign ``s_0 = +1`` (so a positive reward is always
  reachable) and ``s_i = +-1`` with equal probability for ``i > 0``, and a
  level-wide reward scale ``scale ~ LogU[0.5, 2]``.
* end probability per object: 0 with probability 0.5, 1 with probability 0.2,
  else ``U[0, 1]``.
* reappear probability per object: 0 with probability 0.2, else
  ``LogU[0.005, 1]``.
* episode limit: ``round(LogU[20, 500])`` steps (``max_episode_steps`` is the
  upper bound 500; the level's limit rides in the state).
* action set: the family's ``num_actions`` (5, 9 or 18, as ``envs.grid_common``)
  is fixed; per level the action meanings are permuted uniformly (within each
  half for 18 actions), and with 9 or 18 actions the diagonal moves are
  replaced by "stay" with probability 0.5 (a 5-move level in a 9-action
  shape).

Dynamics per step are those of ``envs.tabular`` / ``envs.random_grid``: move
(walls and the canvas edge block), collect a present object on the new cell
(always with 5/9 actions, only with the collect half of 18), pay its reward,
terminate with its end probability; objects absent *before* the step reappear
with their probability (tabular: at their own cell; random: at a uniform free
cell, deferred if the agent or a present object is there).  Reset: tabular --
the agent on a uniform free cell without an object; random -- agent and
objects on distinct uniform free cells.

Observations: tabular -- ``int32`` index ``cell * 2**max_objects + presence``
(``cell`` the canvas index ``row * max_width + col``), ``num_values =
max_height * max_width * 2**max_objects`` (1,296 by default); random -- a
binary ``uint8`` image ``[max_height, max_width, max_objects + 2]``: one
channel per object slot, the agent, and the walls (including the canvas
outside the level).

Chain family (``ChainFamilyConfig``; defaults)
-----------------------------------------------
The delayed chain of ``envs.chain`` with, per level: length ``N`` uniform in
``[3, 40]``; reward scale ``LogU[0.5, 2]`` (final reward ``+-scale``);
noisy (a random ``+-scale`` on every non-final step) with probability 0.5;
position shown with probability 0.5; a number of distractor bits uniform in
``[0, 20]``.  ``num_actions`` (default 2) is fixed per family; the correct
action is uniform per episode.  Observation: a float vector of
``2 + num_actions + n_max + max_distractors`` (64 by default): ``[first state,
first action was correct (later states)]``, the one-hot correct action at the
first state, the one-hot position (zeros when the level hides it), and the
distractor bits (fresh uniform bits, zeros beyond the level's count).
Optimal return ``scale``, uniform-random ``scale * (2 / num_actions - 1)``.

Reference returns per level (``envs.procgen_returns``): exact DP for tabular
levels, vectorised over levels (``level_returns``), and ``level_reference(env,
level)`` -> ``(optimal, random)`` for tabular and chain levels (None for random
grids), jittable, to normalise a lifetime's returns by its own level.  The
families have no entry in ``envs/reference_returns.json`` (no single reference).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import grid_common as gc
from envs.base import Environment, ObsSpec

SPLITS = ("train", "val")
_INDEX_RANGE = 2**30


# ------------------------------------------------------------------ level seeds
def level_seed(key: jax.Array, split: str, num_levels: int | None = None) -> jax.Array:
  """``[]`` int32 level seed ``2 * i + split`` (see the module docstring)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  hi = _INDEX_RANGE if num_levels is None else int(num_levels)
  index = jax.random.randint(key, (), 0, hi, jnp.int32)
  return 2 * index + SPLITS.index(split)


class Draws:
  """Consecutive slices of one ``jax.random.uniform(key, (size,))`` draw.

  One random call per level / reset / step (each ``jax.random`` call adds a
  threefry block to the compiled function, so this keeps compilation short).
  Every method takes the next uniforms in ``[0, 1)`` and maps them.
  """

  def __init__(self, key: jax.Array, size: int):
    self._u = jax.random.uniform(key, (size,))
    self._used = 0

  def uniform(self, shape=(), lo: float = 0.0, hi: float = 1.0) -> jax.Array:
    size = int(np.prod(shape, dtype=np.int64))
    if self._used + size > self._u.shape[0]:
      raise ValueError(f"Draws: {self._u.shape[0]} uniforms are too few")
    u = self._u[self._used:self._used + size].reshape(shape)
    self._used += size
    return lo + (hi - lo) * u

  def integer(self, lo: int, hi: int, shape=()) -> jax.Array:
    """Uniform integers in ``[lo, hi]`` (both included), int32."""
    x = jnp.floor(self.uniform(shape, lo, hi + 1)).astype(jnp.int32)
    return jnp.minimum(x, hi)

  def log_uniform(self, lo: float, hi: float, shape=()) -> jax.Array:
    return jnp.exp(self.uniform(shape, np.log(lo), np.log(hi)))

  def bernoulli(self, p, shape=()) -> jax.Array:
    return self.uniform(shape) < p

  def distinct_from(self, cells: jax.Array, count: jax.Array, k: int) -> jax.Array:
    """``[k]`` distinct uniform entries of ``cells[:count]`` (``count >= k``).

    Draw ``j`` is uniform over the ``count - j`` entries not chosen yet: ``r``
    is shifted past the chosen indices (fixed point of ``r + #{chosen <= x}``,
    reached in ``j`` rounds).
    """
    u = self.uniform((k,))
    chosen = []
    for j in range(k):
      r = jnp.minimum(jnp.floor(u[j] * (count - j)).astype(jnp.int32), count - j - 1)
      x = r
      for _ in range(j):
        x = r + sum((c <= x).astype(jnp.int32) for c in chosen)
      chosen.append(x)
    return cells[jnp.stack(chosen)]

  def distinct(self, allowed: jax.Array, k: int) -> jax.Array:
    """``[k]`` distinct uniform indices where ``allowed`` ``[C]`` (needs ``k`` allowed)."""
    scores = jnp.where(allowed, self.uniform(allowed.shape), -1.0)
    return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


def _check_common(config) -> None:
  if config.split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {config.split!r}")
  if config.num_levels is not None and not 1 <= config.num_levels <= _INDEX_RANGE:
    raise ValueError(f"num_levels must be in [1, 2**30] or None, got {config.num_levels}")


class _Family(Environment):
  """Shared by the families: ``sample_params`` = ``level(level_seed(key))``."""

  config: object

  def sample_params(self, key: jax.Array):
    return self.level(level_seed(key, self.config.split, self.config.num_levels))

  def default_params(self):
    """The level of seed ``split`` (index 0 of the config's split)."""
    return self.level(jnp.asarray(SPLITS.index(self.config.split), jnp.int32))

  def level(self, seed: jax.Array):
    """The level of ``seed`` (``[]`` int): a pure, jittable function of it."""
    draws = Draws(jax.random.PRNGKey(seed), self._level_draws)
    return self._draw_level(draws, jnp.asarray(seed, jnp.int32))

  def _time_limit(self, next_state, terminated):
    # The level's episode limit rides in the state (``state.limit``).
    terminated = jnp.asarray(terminated, jnp.bool_)
    truncated = (next_state.time >= next_state.limit) & ~terminated
    return terminated, truncated


# ------------------------------------------------------------------ grid family
@dataclasses.dataclass(frozen=True)
class GridFamilyConfig:
  """Distribution of grid levels; the defaults are documented in the module docstring.

  Ranges are ``(lo, hi)``; ``LogU`` ranges are marked.  ``per_episode_objects``
  selects the random-grid kind (image observation, objects re-drawn every
  episode) over the tabular kind (index observation, objects fixed per level).
  """
  per_episode_objects: bool = False
  num_actions: int = 9
  max_height: int = 9
  max_width: int = 9
  height: tuple[int, int] = (4, 9)
  width: tuple[int, int] = (4, 9)
  max_objects: int = 4
  num_objects: tuple[int, int] = (1, 4)
  wall_density: tuple[float, float] = (0.0, 0.3)
  magnitude: tuple[float, float] = (0.2, 1.0)
  reward_scale: tuple[float, float] = (0.5, 2.0)    # LogU
  negative_prob: float = 0.5                         # objects 1.. only
  end_zero_prob: float = 0.5
  end_one_prob: float = 0.2
  respawn_zero_prob: float = 0.2
  respawn: tuple[float, float] = (0.005, 1.0)        # LogU
  episode_steps: tuple[int, int] = (20, 500)         # LogU, rounded
  no_diagonal_prob: float = 0.5
  permute_actions: bool = True
  split: str = "train"
  num_levels: int | None = None

  def __post_init__(self):
    _check_common(self)
    gc.moves_of(self.num_actions)  # validates the action set
    if not (1 <= self.height[0] <= self.height[1] <= self.max_height
            and 1 <= self.width[0] <= self.width[1] <= self.max_width):
      raise ValueError("need 1 <= height/width ranges <= max_height/max_width")
    if not 1 <= self.num_objects[0] <= self.num_objects[1] <= self.max_objects <= 8:
      raise ValueError("need 1 <= num_objects range <= max_objects <= 8")
    if self.height[0] * self.width[0] < self.max_objects + 2:
      raise ValueError("the smallest level must hold max_objects + 2 cells")
    if not 1 <= self.episode_steps[0] <= self.episode_steps[1]:
      raise ValueError("need 1 <= episode_steps range")


class GridLevel(NamedTuple):
  """One grid level (``C = max_height * max_width`` canvas cells, ``N = max_objects``)."""
  level_seed: jax.Array      # [] int32.
  free: jax.Array            # [C] bool walkable cells (one 4-connected component).
  start: jax.Array           # [C] bool reset cells of the agent (tabular kind).
  free_list: jax.Array       # [C] int32 the free cells first (ascending), then the rest.
  num_free: jax.Array        # [] int32.
  start_list: jax.Array      # [C] int32 likewise for ``start``.
  num_start: jax.Array       # [] int32.
  obj_cells: jax.Array       # [N] int32 canvas cell of each object (per level).
  active: jax.Array          # [N] bool object exists in this level.
  rewards: jax.Array         # [N] float32.
  end_probs: jax.Array       # [N] float32.
  respawn_probs: jax.Array   # [N] float32.
  action_move: jax.Array     # [A] int32 king-move index (0 = stay) of each action.
  action_collect: jax.Array  # [A] bool the action collects.
  limit: jax.Array           # [] int32 episode limit.


def grid_level(free, obj_cells, active, rewards, end_probs, respawn_probs, action_move,
               action_collect, limit, level_seed=0) -> GridLevel:
  """A ``GridLevel`` from its defining arrays (shapes as in ``GridLevel``).

  Derives the reset cells (free cells without an active object) and the cell
  lists the step draws from; jittable.
  """
  free = jnp.asarray(free, jnp.bool_)
  obj_cells = jnp.asarray(obj_cells, jnp.int32)
  active = jnp.asarray(active, jnp.bool_)
  occupied = jnp.any((jnp.arange(free.shape[0])[:, None] == obj_cells) & active, axis=1)
  start = free & ~occupied
  as_list = lambda m: jnp.argsort(~m, stable=True).astype(jnp.int32)
  count = lambda m: jnp.sum(m).astype(jnp.int32)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return GridLevel(
      level_seed=jnp.asarray(level_seed, jnp.int32), free=free, start=start,
      free_list=as_list(free), num_free=count(free), start_list=as_list(start),
      num_start=count(start), obj_cells=obj_cells, active=active, rewards=f32(rewards),
      end_probs=f32(end_probs), respawn_probs=f32(respawn_probs),
      action_move=jnp.asarray(action_move, jnp.int32),
      action_collect=jnp.asarray(action_collect, jnp.bool_),
      limit=jnp.asarray(limit, jnp.int32))


class GridLevelState(NamedTuple):
  pos: jax.Array       # [] int32 canvas cell of the agent.
  obj_pos: jax.Array   # [N] int32 canvas cell of each object.
  present: jax.Array   # [N] bool.
  time: jax.Array      # [] int32 steps taken in this episode.
  limit: jax.Array     # [] int32 the level's episode limit.


_KING = np.array(gc._KING_MOVES, np.int32)  # [9, 2]
_DIAGONAL = np.array([dr != 0 and dc != 0 for dr, dc in gc._KING_MOVES])


def _shift(x: jax.Array, dr: int, dc: int) -> jax.Array:
  """``y[r, c] = x[r - dr, c - dc]`` with False outside (``x`` ``[H, W]`` bool)."""
  h, w = x.shape
  padded = jnp.pad(x, 1)
  return padded[1 - dr:1 - dr + h, 1 - dc:1 - dc + w]


def connected_from(free: jax.Array, anchor: jax.Array) -> jax.Array:
  """``[H, W]`` bool: cells of ``free`` 4-connected to the flat cell ``anchor``."""
  h, w = free.shape
  seed = (jnp.arange(h * w) == anchor).reshape(h, w) & free

  def grow(_, reach):
    nb = reach
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
      nb = nb | _shift(reach, dr, dc)
    return nb & free
  return jax.lax.fori_loop(0, h * w, grow, seed)


class GridFamily(_Family):
  """Tabular or random grid levels drawn per lifetime; see the module docstring."""

  def __init__(self, config: GridFamilyConfig = GridFamilyConfig(), name: str = "procgen/grid"):
    self.config = config
    self.name = name
    self._moves, self._collect = gc.moves_of(config.num_actions)
    if config.num_actions == 5:  # cross moves, as king-move indices.
      self._moves = np.array([0, 1, 3, 5, 7], np.int32)

  @property
  def num_actions(self) -> int:
    return self.config.num_actions

  @property
  def num_cells(self) -> int:
    return self.config.max_height * self.config.max_width

  @property
  def obs_spec(self) -> ObsSpec:
    c = self.config
    if c.per_episode_objects:
      return ObsSpec(shape=(c.max_height, c.max_width, c.max_objects + 2), dtype=jnp.uint8,
                     kind="image")
    return ObsSpec(shape=(), dtype=jnp.int32, kind="index",
                   num_values=self.num_cells * 2**c.max_objects)

  @property
  def max_episode_steps(self) -> int:
    return self.config.episode_steps[1]

  # ---------------------------------------------------------------- levels
  @property
  def _level_draws(self) -> int:
    return 5 * self.num_cells + 6 * self.config.max_objects + 9 + 8

  def _draw_layout(self, draws: Draws) -> jax.Array:
    """``[C]`` bool free cells: size, walls, one connected component."""
    c = self.config
    h = draws.integer(*c.height)
    w = draws.integer(*c.width)
    rows = jnp.arange(c.max_height)[:, None]
    cols = jnp.arange(c.max_width)[None, :]
    area = (rows < h) & (cols < w)
    rho = draws.uniform((), *c.wall_density)
    walled = area & (draws.uniform(area.shape) >= rho)
    anchor = draws.distinct(walled.reshape(-1), 1)[0]
    reach = connected_from(walled, anchor)
    reach = jnp.where(jnp.sum(reach) >= c.max_objects + 2, reach, area)
    return reach.reshape(-1)

  def _draw_objects(self, draws: Draws):
    """``(count [], rewards [N], end_probs [N], respawn_probs [N])``."""
    c = self.config
    n = c.max_objects
    count = draws.integer(*c.num_objects)
    scale = draws.log_uniform(*c.reward_scale)
    magnitude = draws.uniform((n,), *c.magnitude)
    negative = draws.bernoulli(c.negative_prob, (n,)) & (jnp.arange(n) > 0)
    rewards = jnp.where(negative, -1.0, 1.0) * magnitude * scale
    u = draws.uniform((n,))
    end = jnp.where(u < c.end_zero_prob, 0.0,
                    jnp.where(u < c.end_zero_prob + c.end_one_prob, 1.0, draws.uniform((n,))))
    respawn = jnp.where(draws.bernoulli(c.respawn_zero_prob, (n,)), 0.0,
                        draws.log_uniform(*c.respawn, (n,)))
    return count, rewards, end, respawn

  def _draw_actions(self, draws: Draws):
    """``(action_move [A], action_collect [A])``: permuted meanings, maybe no diagonals."""
    c = self.config
    moves = jnp.asarray(self._moves)
    if c.permute_actions:
      half = 9 if c.num_actions == 18 else c.num_actions
      perm = jnp.argsort(draws.uniform((half,)))
      moves = jnp.tile(moves[:half][perm], c.num_actions // half)
    if c.num_actions != 5:
      no_diag = draws.bernoulli(c.no_diagonal_prob)
      moves = jnp.where(no_diag & jnp.asarray(_DIAGONAL)[moves], 0, moves)
    return moves.astype(jnp.int32), jnp.asarray(self._collect)

  def _place_objects(self, draws: Draws, free: jax.Array) -> jax.Array:
    """``[N]`` distinct free cells; a free 4-neighbour of object 0 is kept empty.

    So the positive object 0 can always be collected (from the start cell next
    to it, at least), whatever objects the others are.
    """
    w = self.config.max_width
    first = draws.distinct(free, 1)[0]
    cells = jnp.arange(self.num_cells)
    dist = jnp.abs(cells // w - first // w) + jnp.abs(cells % w - first % w)
    beside = draws.distinct(free & (dist == 1), 1)[0]
    others = draws.distinct(free & (cells != first) & (cells != beside),
                            self.config.max_objects - 1)
    return jnp.concatenate([first[None], others])

  def _draw_level(self, draws: Draws, seed: jax.Array) -> GridLevel:
    c = self.config
    free = self._draw_layout(draws)
    count, rewards, end, respawn = self._draw_objects(draws)
    active = jnp.arange(c.max_objects) < count
    obj_cells = self._place_objects(draws, free)
    move, collect = self._draw_actions(draws)
    limit = jnp.round(draws.log_uniform(*c.episode_steps))
    limit = jnp.clip(limit, c.episode_steps[0], c.episode_steps[1])
    return grid_level(free, obj_cells, active, rewards, end, respawn, move, collect, limit, seed)

  # -------------------------------------------------------------- dynamics
  def move(self, pos: jax.Array, action: jax.Array, level: GridLevel) -> jax.Array:
    """``[]`` canvas cell after ``action`` from ``pos`` (blocked by walls and the edge)."""
    w = self.config.max_width
    delta = jnp.asarray(_KING)[level.action_move[action]]
    r, col = pos // w + delta[0], pos % w + delta[1]
    inside = (r >= 0) & (r < self.config.max_height) & (col >= 0) & (col < w)
    target = jnp.clip(r, 0, self.config.max_height - 1) * w + jnp.clip(col, 0, w - 1)
    return jnp.where(inside & level.free[target], target, pos).astype(jnp.int32)

  def reset_env(self, key: jax.Array, level: GridLevel) -> GridLevelState:
    if self.config.per_episode_objects:
      k = self.config.max_objects + 1
      cells = Draws(key, k).distinct_from(level.free_list, level.num_free, k)
      pos, obj_pos = cells[0], cells[1:]
    else:
      pos = Draws(key, 1).distinct_from(level.start_list, level.num_start, 1)[0]
      obj_pos = level.obj_cells
    return GridLevelState(pos=pos, obj_pos=obj_pos, present=level.active,
                          time=jnp.zeros((), jnp.int32), limit=level.limit)

  def step_env(self, key: jax.Array, state: GridLevelState, action: jax.Array,
               level: GridLevel):
    n = self.config.max_objects
    draws = Draws(key, 1 + n + (n if self.config.per_episode_objects else 0))
    action = jnp.asarray(action, jnp.int32)
    pos = self.move(state.pos, action, level)
    hit = (state.obj_pos == pos) & state.present & level.action_collect[action]
    reward = jnp.sum(jnp.where(hit, level.rewards, 0.0))
    terminated = jnp.any(hit & draws.bernoulli(level.end_probs))
    reappear = ~state.present & level.active & draws.bernoulli(level.respawn_probs, (n,))
    present, obj_pos = state.present & ~hit, state.obj_pos
    if self.config.per_episode_objects:
      new_cells = level.free_list[draws.integer(0, level.num_free - 1, (n,))]  # uniform free.
      for i in range(n):  # sequential, so that objects never share a cell.
        blocked = (new_cells[i] == pos) | jnp.any(present & (obj_pos == new_cells[i]))
        ok = reappear[i] & ~blocked
        present = present.at[i].set(present[i] | ok)
        obj_pos = obj_pos.at[i].set(jnp.where(ok, new_cells[i], obj_pos[i]))
    else:
      present = present | reappear
    new_state = GridLevelState(pos=pos, obj_pos=obj_pos, present=present,
                               time=state.time + 1, limit=state.limit)
    return new_state, reward, terminated

  def get_obs(self, state: GridLevelState, level: GridLevel) -> jax.Array:
    c = self.config
    if not c.per_episode_objects:
      bits = jnp.sum(jnp.where(state.present, 1 << jnp.arange(c.max_objects), 0))
      return (state.pos * 2**c.max_objects + bits).astype(jnp.int32)
    cells = jnp.arange(self.num_cells)
    objs = (cells[:, None] == state.obj_pos[None, :]) & state.present[None, :]
    img = jnp.concatenate([objs, (cells == state.pos)[:, None], ~level.free[:, None]], axis=1)
    return img.astype(jnp.uint8).reshape(c.max_height, c.max_width, c.max_objects + 2)


# ----------------------------------------------------------------- chain family
@dataclasses.dataclass(frozen=True)
class ChainFamilyConfig:
  """Distribution of chain levels; defaults documented in the module docstring."""
  num_actions: int = 2
  length: tuple[int, int] = (3, 40)
  reward_scale: tuple[float, float] = (0.5, 2.0)   # LogU
  noisy_prob: float = 0.5
  show_position_prob: float = 0.5
  max_distractors: int = 20
  split: str = "train"
  num_levels: int | None = None

  def __post_init__(self):
    _check_common(self)
    if not 2 <= self.length[0] <= self.length[1]:
      raise ValueError(f"need 2 <= length range, got {self.length}")
    if self.num_actions < 2:
      raise ValueError(f"need num_actions >= 2, got {self.num_actions}")


class ChainLevel(NamedTuple):
  level_seed: jax.Array    # [] int32.
  length: jax.Array        # [] int32 chain length N.
  scale: jax.Array         # [] float32 reward scale.
  noisy: jax.Array         # [] bool random +-scale on non-final steps.
  show_position: jax.Array  # [] bool position one-hot in the observation.
  distractors: jax.Array   # [D] bool distractor bit in use.


class ChainLevelState(NamedTuple):
  pos: jax.Array       # [] int32 position in [0, N).
  correct: jax.Array   # [] int32 the paying first action of this episode.
  good: jax.Array      # [] bool the first action was correct.
  noise: jax.Array     # [D] float32 fresh random bits.
  time: jax.Array      # [] int32.
  limit: jax.Array     # [] int32 (N + 1: never binds; episodes terminate after N steps).


class ChainFamily(_Family):
  """Delayed-chain levels drawn per lifetime; see the module docstring."""

  def __init__(self, config: ChainFamilyConfig = ChainFamilyConfig(),
               name: str = "procgen/chain"):
    self.config = config
    self.name = name

  @property
  def num_actions(self) -> int:
    return self.config.num_actions

  @property
  def obs_spec(self) -> ObsSpec:
    c = self.config
    size = 2 + c.num_actions + c.length[1] + c.max_distractors
    return ObsSpec(shape=(size,), dtype=jnp.float32, kind="vector")

  @property
  def max_episode_steps(self) -> int:
    return self.config.length[1] + 1

  _level_draws = 5

  def _draw_level(self, draws: Draws, seed: jax.Array) -> ChainLevel:
    c = self.config
    return ChainLevel(
        level_seed=seed,
        length=draws.integer(*c.length),
        scale=draws.log_uniform(*c.reward_scale).astype(jnp.float32),
        noisy=draws.bernoulli(c.noisy_prob),
        show_position=draws.bernoulli(c.show_position_prob),
        distractors=jnp.arange(c.max_distractors) < draws.integer(0, c.max_distractors))

  def _noise(self, draws: Draws) -> jax.Array:
    return draws.bernoulli(0.5, (self.config.max_distractors,)).astype(jnp.float32)

  def reset_env(self, key: jax.Array, level: ChainLevel) -> ChainLevelState:
    draws = Draws(key, 1 + self.config.max_distractors)
    return ChainLevelState(
        pos=jnp.zeros((), jnp.int32), correct=draws.integer(0, self.config.num_actions - 1),
        good=jnp.zeros((), jnp.bool_), noise=self._noise(draws),
        time=jnp.zeros((), jnp.int32), limit=level.length + 1)

  def step_env(self, key: jax.Array, state: ChainLevelState, action: jax.Array,
               level: ChainLevel):
    draws = Draws(key, 1 + self.config.max_distractors)
    first = state.pos == 0
    good = jnp.where(first, jnp.asarray(action, jnp.int32) == state.correct, state.good)
    last = state.pos == level.length - 1
    noise_reward = jnp.where(level.noisy, jnp.where(draws.bernoulli(0.5), 1.0, -1.0), 0.0)
    reward = level.scale * jnp.where(last, jnp.where(good, 1.0, -1.0), noise_reward)
    new_state = ChainLevelState(pos=state.pos + 1, correct=state.correct, good=good,
                                noise=self._noise(draws), time=state.time + 1, limit=state.limit)
    return new_state, reward, last

  def get_obs(self, state: ChainLevelState, level: ChainLevel) -> jax.Array:
    c = self.config
    first = state.pos == 0
    head = jnp.stack([first, ~first & state.good]).astype(jnp.float32)
    cue = jax.nn.one_hot(state.correct, c.num_actions) * first
    position = jax.nn.one_hot(state.pos, c.length[1]) * level.show_position
    return jnp.concatenate([head, cue, position, state.noise * level.distractors])

  def optimal_return(self, level: ChainLevel) -> jax.Array:
    """Expected return of the optimal policy: ``scale`` (noise has mean zero)."""
    return level.scale

  def random_return(self, level: ChainLevel) -> jax.Array:
    """Uniform-random policy: ``scale * (2 / num_actions - 1)``."""
    return level.scale * (2.0 / self.config.num_actions - 1.0)


# ------------------------------------------------------------------- the table
def make_family(config, name: str = "procgen", **overrides) -> Environment:
  """The family of ``config`` (a ``GridFamilyConfig`` or ``ChainFamilyConfig``).

  ``overrides`` replace config fields (``num_levels=1024``, ``split="val"``,
  ``num_actions=5``, ...); unknown fields raise ``ValueError``.
  """
  fields = {f.name for f in dataclasses.fields(config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown {type(config).__name__} fields {unknown}; known: {sorted(fields)}")
  config = dataclasses.replace(config, **overrides)
  if isinstance(config, ChainFamilyConfig):
    return ChainFamily(config, name=name)
  return GridFamily(config, name=name)


_BASE = {
    "tabular": GridFamilyConfig(),
    "random": GridFamilyConfig(per_episode_objects=True),
    "chain": ChainFamilyConfig(),
}
PROCGEN_CONFIGS = {
    **_BASE,
    **{f"{n}_val": dataclasses.replace(cfg, split="val") for n, cfg in _BASE.items()},
}
"""Registered as ``procgen/<name>``: training levels, and ``<name>_val`` held-out levels."""
TRAIN_NAMES = tuple(f"procgen/{n}" for n in _BASE)
VAL_NAMES = tuple(f"procgen/{n}_val" for n in _BASE)
