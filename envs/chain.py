"""Delayed chain MDPs (LPG_SPEC section 5, "Delayed chain MDPs").

Two actions.  Each episode draws a correct action ``c`` in {0, 1}, which the
first observation reveals.  Only the first action of an episode matters: the
agent then walks down a chain of ``N`` states whatever it does, and the last
transition pays +1 if the first action was ``c`` and -1 otherwise.  ``N`` is drawn
once per lifetime (``sample_params``) uniformly in ``[n_min, n_max]``.

Choices the spec leaves open (documented here, configurable in ``ChainConfig``):

* An episode has exactly ``N`` transitions; the final +-1 is the reward of the
  N-th one, which terminates the episode.  Optimal return +1, random 0.
* Noisy variants add an independent random +-1 reward to every transition but
  the last (so their expected return is unchanged).
* Observation of the plain and noisy chains: an integer state index
  (``ObsSpec.kind == "index"``) over ``2 * n_max`` states: index ``c`` at the
  first state, then ``2 + 2*(k-1) + o`` at chain position ``k >= 1`` where
  ``o`` says whether the first action was correct.  This is the one-hot full
  state of the spec, stored as an index.
* ``state_distraction``: a 22-bit float vector.  Bit 0 is 1 at the first state,
  bit 1 is ``c`` at the first state and "the first action was correct" later;
  the other 20 bits are fresh uniform random bits at every step.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from envs.base import Environment, ObsSpec


@dataclasses.dataclass(frozen=True)
class ChainConfig:
  """Static description of a chain family.

  Attributes:
    n_min, n_max: range of the chain length N drawn per lifetime [ported:
      short 5..30, long 5..50].
    noisy: random +-1 reward on every non-final step [ported].
    distraction_bits: number of random observation bits (0: index observation;
      20 for ``state_distraction`` [ported]).
    default_n: N used by ``default_params`` (the middle of the range).
  """
  n_min: int
  n_max: int
  noisy: bool = False
  distraction_bits: int = 0

  @property
  def default_n(self) -> int:
    return (self.n_min + self.n_max) // 2


class ChainParams(NamedTuple):
  length: jax.Array  # [] int32, the chain length N of this lifetime.


class ChainState(NamedTuple):
  pos: jax.Array      # [] int32 in [0, N): position along the chain.
  correct: jax.Array  # [] int32 in {0, 1}: the action that pays off this episode.
  good: jax.Array     # [] bool: the first action was the correct one.
  noise: jax.Array    # [distraction_bits] float32 random bits (empty when unused).
  time: jax.Array     # [] int32 steps taken in this episode.


CHAIN_CONFIGS = {
    "short": ChainConfig(5, 30),
    "short_noisy": ChainConfig(5, 30, noisy=True),
    "long": ChainConfig(5, 50),
    "long_noisy": ChainConfig(5, 50, noisy=True),
    "state_distraction": ChainConfig(5, 30, distraction_bits=20),
}


class DelayedChain(Environment):
  """A delayed chain MDP; see the module docstring for the exact dynamics."""

  def __init__(self, config: ChainConfig, name: str = "chain"):
    if not 2 <= config.n_min <= config.n_max:
      raise ValueError(f"need 2 <= n_min <= n_max, got {config}")
    self.config = config
    self.name = name

  @property
  def num_actions(self) -> int:
    return 2

  @property
  def obs_spec(self) -> ObsSpec:
    if self.config.distraction_bits:
      return ObsSpec(shape=(2 + self.config.distraction_bits,), dtype=jnp.float32,
                     kind="vector")
    return ObsSpec(shape=(), dtype=jnp.int32, kind="index",
                   num_values=2 * self.config.n_max)

  @property
  def max_episode_steps(self) -> int:
    # Episodes end by termination after N <= n_max steps; the limit never binds.
    return self.config.n_max + 1

  def default_params(self) -> ChainParams:
    return ChainParams(length=jnp.asarray(self.config.default_n, jnp.int32))

  def sample_params(self, key: jax.Array) -> ChainParams:
    n = jax.random.randint(key, (), self.config.n_min, self.config.n_max + 1)
    return ChainParams(length=n.astype(jnp.int32))

  def _noise(self, key: jax.Array) -> jax.Array:
    bits = self.config.distraction_bits
    return jax.random.bernoulli(key, 0.5, (bits,)).astype(jnp.float32)

  def reset_env(self, key: jax.Array, params: ChainParams) -> ChainState:
    key_c, key_n = jax.random.split(key)
    return ChainState(
        pos=jnp.zeros((), jnp.int32),
        correct=jax.random.bernoulli(key_c).astype(jnp.int32),
        good=jnp.zeros((), jnp.bool_),
        noise=self._noise(key_n),
        time=jnp.zeros((), jnp.int32))

  def step_env(self, key, state: ChainState, action, params: ChainParams):
    key_r, key_n = jax.random.split(key)
    first = state.pos == 0
    good = jnp.where(first, jnp.asarray(action, jnp.int32) == state.correct, state.good)
    last = state.pos == params.length - 1
    final_reward = jnp.where(good, 1.0, -1.0)
    if self.config.noisy:
      noise_reward = jnp.where(jax.random.bernoulli(key_r), 1.0, -1.0)
    else:
      noise_reward = 0.0
    reward = jnp.where(last, final_reward, noise_reward)
    new_state = ChainState(pos=state.pos + 1, correct=state.correct, good=good,
                           noise=self._noise(key_n), time=state.time + 1)
    return new_state, reward, last

  def get_obs(self, state: ChainState, params: ChainParams) -> jax.Array:
    first = state.pos == 0
    info = jnp.where(first, state.correct, state.good.astype(jnp.int32))
    if self.config.distraction_bits:
      relevant = jnp.stack([first.astype(jnp.float32), info.astype(jnp.float32)])
      return jnp.concatenate([relevant, state.noise])
    return jnp.where(first, info, 2 + 2 * (state.pos - 1) + info).astype(jnp.int32)

  # Reference returns used for normalised scores.
  def optimal_return(self, params: ChainParams | None = None) -> float:
    """Expected return of the optimal policy (+1; noise has mean zero)."""
    del params
    return 1.0

  def random_return(self, params: ChainParams | None = None) -> float:
    """Expected return of the uniform random policy (0)."""
    del params
    return 0.0
