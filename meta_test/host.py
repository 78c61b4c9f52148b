"""Training on environments stepped on the host (not JAX-native).

Two sources: a user's ``dm_env.Environment`` factory (``--env
package.module:factory``) and Atari through ale-py (``--env atari/<Game>``).
Both are wrapped as a ``HostVecEnv``: ``B`` environments stepped together with
numpy arrays and auto-reset, the same conventions as ``envs.base``.

The loop is a Python loop over steps (one jitted policy call per step for all
``B`` environments, one jitted ``inner_update`` per rollout), so it is much
slower than the compiled path used for registered environments; seeds run one
after another.
"""
from __future__ import annotations

import importlib
import re
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from envs.base import ObsSpec
from lpg.cli import UserError, one_line
from lpg.networks import make_agent_network
from lpg.rule import UpdateRule, make_progress
from lpg.types import PyTree, Rollout
from lpg.update import inner_update, make_optimizer
from meta_test.train import RunConfig, RunResult, UpdateMetrics

ATARI_INSTALL_HINT = 'pip install -e ".[atari]"'


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message says how to install it."""


class FactoryError(UserError):
  """A user's ``--env module:factory`` failed (raised, or needs arguments); the cause
  (the user's own traceback) is chained and shown under ``--debug``."""


def call_factory(factory: Callable[[], Any], name: str, what: str = "the factory") -> Any:
  """``factory()``, turning anything it raises into one ``FactoryError`` line."""
  try:
    return factory()
  except Exception as e:  # noqa: BLE001  (the user's code may raise anything)
    raise FactoryError(f"--env {name}: {what} failed ({type(e).__name__}: {one_line(e)}); "
                       "it must build a dm_env.Environment when called with no arguments "
                       "(or only seed=); rerun with --debug for its traceback") from e


class HostVecEnv(Protocol):
  """``B`` environments on the host with auto-reset.

  ``reset() -> obs [B, *obs_shape]``; ``step(actions [B]) -> (obs, reward [B],
  terminated [B], truncated [B], raw_reward [B])`` where ``obs`` after an
  episode end is the first observation of the next episode and ``raw_reward``
  is the unclipped reward used for reporting returns.
  """
  name: str
  obs_spec: ObsSpec
  num_actions: int
  num_envs: int

  def reset(self) -> np.ndarray: ...

  def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]: ...


# --------------------------------------------------------------------- dm_env
def load_factory(spec: str) -> Callable[[], Any]:
  """``"package.module:factory"`` -> the callable; ``UserError`` if not found,
  ``FactoryError`` if importing its module fails."""
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise UserError(f"--env {spec!r}: expected package.module:factory")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f"--env {spec!r}: cannot import module {module_name!r} ({e})") from None
  except Exception as e:  # noqa: BLE001  (importing the user's module ran their code)
    raise FactoryError(f"--env {spec!r}: importing {module_name!r} failed "
                       f"({type(e).__name__}: {one_line(e)}); rerun with --debug for its "
                       "traceback") from e
  factory = getattr(module, attr, None)
  if not callable(factory):
    raise UserError(f"--env {spec!r}: module {module_name!r} has no callable {attr!r}")
  return factory


def obs_spec_from_dm_env(spec) -> ObsSpec:
  """An ``ObsSpec`` for a dm_env observation spec (a single array)."""
  from dm_env import specs
  if isinstance(spec, specs.DiscreteArray):
    return ObsSpec(shape=(), dtype=np.int32, kind="index", num_values=int(spec.num_values))
  if not isinstance(spec, specs.Array):
    raise UserError("only environments with a single array observation are supported, "
                    f"got {type(spec).__name__}")
  kind = "image" if len(spec.shape) == 3 else "vector"
  return ObsSpec(shape=tuple(spec.shape), dtype=np.float32, kind=kind)


class DmEnvVec:
  """``B`` instances of a user's ``dm_env.Environment`` as a ``HostVecEnv``."""

  def __init__(self, factory: Callable[[], Any], num_envs: int, name: str):
    import dm_env
    from dm_env import specs
    self.name = name
    self.num_envs = num_envs
    self.envs = [call_factory(factory, name) for _ in range(num_envs)]
    first = self.envs[0]
    if not isinstance(first, dm_env.Environment):
      raise UserError(f"--env {name!r}: the factory returned {type(first).__name__}, "
                      "not a dm_env.Environment")
    action_spec = call_factory(first.action_spec, name, "action_spec()")
    if not isinstance(action_spec, specs.DiscreteArray):
      raise UserError(f"--env {name!r}: only discrete actions (a DiscreteArray action spec) "
                      "are supported")
    self.num_actions = int(action_spec.num_values)
    self.obs_spec = obs_spec_from_dm_env(call_factory(first.observation_spec, name,
                                                      "observation_spec()"))

  def _obs(self, ts) -> np.ndarray:
    return np.asarray(ts.observation, self.obs_spec.dtype)

  def reset(self) -> np.ndarray:
    return np.stack([self._obs(e.reset()) for e in self.envs])

  def step(self, actions):
    obs, rew, term, trunc = [], [], [], []
    for e, a in zip(self.envs, np.asarray(actions)):
      ts = e.step(int(a))
      r = float(ts.reward or 0.0)
      if ts.last():
        term.append(float(ts.discount) == 0.0)
        trunc.append(float(ts.discount) != 0.0)
        ts = e.reset()
      else:
        term.append(False)
        trunc.append(False)
      obs.append(self._obs(ts))
      rew.append(r)
    rew = np.asarray(rew, np.float32)
    return np.stack(obs), rew, np.asarray(term), np.asarray(trunc), rew


# ---------------------------------------------------------------------- Atari
def _snake(name: str) -> str:
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class AtariVec:
  """Atari through ale-py's vector environment (``pip install -e ".[atari]"``).

  Settings [chosen, the common Machado et al. 2018 protocol]: grey 84x84
  frames, frame stack 4, frame skip 4 with max-pooling, sticky actions 0.25,
  episodes capped at 108k frames, minimal action set, no-op starts.  Rewards are
  clipped to [-1, 1] for learning; reported returns are the game's raw score.
  Observations are ``[84, 84, 4]`` float32 in [0, 1].
  """

  def __init__(self, game: str, num_envs: int, seed: int = 0):
    try:
      from ale_py.vector_env import AtariVectorEnv
    except ImportError:
      raise MissingExtraError(f"--env atari/{game} needs ale-py; install it with "
                              f"{ATARI_INSTALL_HINT}") from None
    from ale_py import ALEInterface, LoggerMode, roms
    # The ALE prints a two-line banner ("A.L.E: Arcade Learning Environment ...",
    # "[Powered by Stella]") on stderr whenever it starts; errors must stay one line.
    ALEInterface.setLoggerMode(LoggerMode.Error)
    rom = _snake(game)
    if rom not in roms.get_all_rom_ids():
      raise UserError(f"unknown Atari game {game!r} (ale-py ROM id {rom!r})")
    self.name = f"atari/{game}"
    self.num_envs = num_envs
    self.seed = seed
    self._env = AtariVectorEnv(rom, num_envs, repeat_action_probability=0.25,
                               max_num_frames_per_episode=108_000, reward_clipping=False,
                               stack_num=4, img_height=84, img_width=84, grayscale=True,
                               autoreset_mode="SameStep")
    self.num_actions = int(self._env.single_action_space.n)
    self.obs_spec = ObsSpec(shape=(84, 84, 4), dtype=np.float32, kind="image")

  @staticmethod
  def _obs(obs) -> np.ndarray:
    return np.transpose(np.asarray(obs, np.float32) / 255.0, (0, 2, 3, 1))

  def reset(self) -> np.ndarray:
    obs, _ = self._env.reset(seed=self.seed)
    return self._obs(obs)

  def step(self, actions):
    obs, rew, term, trunc, _ = self._env.step(np.asarray(actions, np.int32))
    raw = np.asarray(rew, np.float32)
    term = np.asarray(term, bool)
    return (self._obs(obs), np.clip(raw, -1.0, 1.0), term,
            np.logical_and(np.asarray(trunc, bool), ~term), raw)


def check_atari_available(game: str) -> None:
  """Raises ``MissingExtraError`` if ale-py is missing, ``UserError`` for an unknown game."""
  try:
    from ale_py import roms
  except ImportError:
    raise MissingExtraError(f"--env atari/{game} needs ale-py; install it with "
                            f"{ATARI_INSTALL_HINT}") from None
  if _snake(game) not in roms.get_all_rom_ids():
    raise UserError(f"unknown Atari game {game!r} (ale-py ROM id {_snake(game)!r})")


# ----------------------------------------------------------------- the loop
def host_train(make_vec: Callable[[int], HostVecEnv], config: RunConfig, rule: UpdateRule,
               rule_params: PyTree, seeds: list[int],
               progress: Callable[[int], None] | None = None) -> RunResult:
  """Trains one agent per seed on host environments; metrics as ``run_seeds``.

  Args:
    make_vec: ``seed -> HostVecEnv`` with ``config.num_envs`` environments.
    config: agent, optimiser, hyperparameters, ``B``, ``T``, ``U`` (``chunk`` unused).
    rule, rule_params: the update rule and its frozen parameters.
    seeds: integer seeds (agent init, action sampling and env seeding).
    progress: called with 1 after each update.
  Returns:
    ``RunResult`` with ``UpdateMetrics`` ``[S, U]`` (``state`` is None).
  """
  t_start = time.perf_counter()
  num_envs, rollout_len, num_updates = config.num_envs, config.rollout_len, config.num_updates
  vec0 = make_vec(seeds[0])
  net = make_agent_network(config.agent, vec0.obs_spec, vec0.num_actions, rule.head_sizes())
  optimizer = make_optimizer(config.optimizer)

  @jax.jit
  def act(params, obs, key):
    return jax.random.categorical(key, net.apply(params, obs).logits).astype(jnp.int32)

  @jax.jit
  def update(params, opt_state, rollout, i):
    res = inner_update(rule, rule_params, net, optimizer, params, opt_state, rollout,
                       config.hypers_at(i), progress=make_progress(i, config.num_updates))
    return res.params, res.opt_state, res.metrics["loss"]

  all_metrics = []
  chunk_s = []
  for i, seed in enumerate(seeds):
    vec = vec0 if i == 0 else make_vec(seed)
    key = jax.random.PRNGKey(seed)
    key, k_init = jax.random.split(key)
    params = net.init(k_init)
    opt_state = optimizer.init(params)
    obs = vec.reset()
    ep_ret = np.zeros(num_envs, np.float64)
    rows = []
    for n_upd in range(num_updates):
      t0 = time.perf_counter()
      obs_buf, act_buf, rew_buf, term_buf, trunc_buf = [obs], [], [], [], []
      ret_sum, count, raw_sum = 0.0, 0, 0.0
      for _ in range(rollout_len):
        key, k = jax.random.split(key)
        a = np.asarray(act(params, obs, k))
        obs, r, term, trunc, raw = vec.step(a)
        ep_ret += raw
        done = np.logical_or(term, trunc)
        ret_sum += float(ep_ret[done].sum())
        count += int(done.sum())
        raw_sum += float(raw.sum())
        ep_ret[done] = 0.0
        obs_buf.append(obs)
        act_buf.append(a)
        rew_buf.append(r)
        term_buf.append(term)
        trunc_buf.append(trunc)
      rollout = Rollout(obs=np.stack(obs_buf), actions=np.stack(act_buf).astype(np.int32),
                        rewards=np.stack(rew_buf).astype(np.float32),
                        terminated=np.stack(term_buf), truncated=np.stack(trunc_buf))
      params, opt_state, loss = update(params, opt_state, rollout, n_upd)
      rows.append((ret_sum, count, raw_sum, float(loss), np.nan, 0.0))
      chunk_s.append(time.perf_counter() - t0)
      if progress is not None:
        progress(1)
    all_metrics.append(np.asarray(rows, np.float64))
  stacked = np.stack(all_metrics)                                   # [S, U, 6]
  metrics = UpdateMetrics(*[stacked[..., j] for j in range(6)], meta_params={})
  return RunResult(metrics=metrics, state=None, chunk_s=tuple(chunk_s),
                   chunk_updates=tuple([1] * len(chunk_s)), run_s=time.perf_counter() - t_start,
                   steps_per_update=num_envs * rollout_len, seeds_per_chunk=1)
