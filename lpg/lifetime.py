"""A forward-only lifetime: a fresh agent trained by a rule, one compiled scan.

``make_lifetime(...)`` returns ``lifetime(rule_params, hypers, key, planned)``:
draw a task (``env.sample_params``), initialise an agent, then ``lax.scan``
over ``num_updates`` agent updates, each one ``make_agent_step``'s step:
``lpg.rollout.unroll`` (``T`` steps x ``B`` envs) followed by
``lpg.update.inner_update`` with the agent's ``LifetimeProgress`` (n updates
done of the ``planned`` N).  That step is the agent's update everywhere a
rule trains agents forward (``meta_test.train.make_train`` scans it too).  Nothing
is differentiated, so a lifetime keeps no activations: memory does not grow
with its length, and ``jax.vmap`` over rule parameters (evolution strategies'
members) and keys (seeds, tasks) is cheap.

``planned`` may be smaller than the static ``num_updates`` (randomised
lifetime lengths): updates ``n >= planned`` are skipped by a ``lax.cond``,
a real branch while ``planned`` is shared by the vmapped lifetimes (a select,
so no saving, when it differs between them).

``fitness(trace, window, reference)`` turns a trace into one score: the mean
return of the episodes that ended in the last ``window`` of the lifetime
(its whole length for ``window = 1``), normalised by ``(optimal, random)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from envs.base import Environment
from lpg.networks import AgentConfig, AgentNetwork, make_agent_network
from lpg.rollout import EnvCarry, reset_envs, unroll
from lpg.rule import (InnerHypers, LifetimeProgress, UpdateRule, entropy_from_logits,
                      make_progress)
from lpg.types import EpisodeStats, PyTree, Rollout
from lpg.update import OptimizerConfig, UpdateResult, inner_update, make_optimizer


@dataclasses.dataclass(frozen=True)
class LifetimeConfig:
  """Sizes of one lifetime.

  Attributes:
    num_updates: the most agent updates a lifetime can run (static scan
      length); ``planned`` below picks the actual N per call.
    rollout_len: T, steps per env per update.
    num_envs: B, parallel envs of the agent.
  """
  num_updates: int = 100
  rollout_len: int = 20
  num_envs: int = 16

  def __post_init__(self):
    for f in ("num_updates", "rollout_len", "num_envs"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"LifetimeConfig.{f} must be >= 1, got {getattr(self, f)}")

  @property
  def steps_per_update(self) -> int:
    return self.rollout_len * self.num_envs


class LifetimeTrace(NamedTuple):
  """Per-update record of one lifetime; ``[U]`` each (``[..., U]`` vmapped).

  Attributes:
    return_sum: sum of the returns of the episodes that ended in the update.
    episodes: number of episodes that ended in the update.
    progress: n/N the rule was given at the update.
    active: 1 where the update ran (``n < planned``), 0 where it was skipped.
    entropy: mean policy entropy over the update's rollout.
    pi_hat_rms: root mean square of the rule's ``pi_hat`` targets.
  """
  return_sum: jax.Array
  episodes: jax.Array
  progress: jax.Array
  active: jax.Array
  entropy: jax.Array
  pi_hat_rms: jax.Array


def mean_returns(trace: LifetimeTrace) -> jax.Array:
  """``[..., U]`` mean return of the episodes ended in each update (NaN if none)."""
  return jnp.where(trace.episodes > 0, trace.return_sum / jnp.maximum(trace.episodes, 1.0),
                   jnp.nan)


def fitness(trace: LifetimeTrace, window: float = 1.0,
            reference: tuple[float, float] | None = None, entropy_coef: float = 0.0,
            max_entropy: float = 1.0) -> jax.Array:
  """One lifetime's score ``[...]``: normalised mean episode return over a window, plus
  an optional policy-entropy bonus.

  Args:
    trace: ``LifetimeTrace`` with ``[..., U]`` fields.
    window: the final fraction of the planned lifetime that counts (updates
      with ``n/N >= 1 - window``); 1 is the whole lifetime.
    reference: ``(optimal, random)`` returns; the score is
      ``(R - random) / (optimal - random)``; ``None`` leaves ``R`` raw.
    entropy_coef: weight of the bonus ``entropy_coef * H / max_entropy``, ``H`` the mean
      policy entropy of the window's updates (the trace needs ``diagnostics``); the
      meta-gradient's entropy term for whole-lifetime ES, so that a rule is not rewarded
      for agents that stop exploring.  0: no bonus.
    max_entropy: ``log |A|``, so the bonus lies in ``[0, entropy_coef]`` in every world.
  """
  if not 0.0 < window <= 1.0:
    raise ValueError(f"fitness window must lie in (0, 1], got {window}")
  inside = trace.active * (trace.progress >= 1.0 - window - 1e-6)
  ret = jnp.sum(trace.return_sum * inside, -1) / jnp.maximum(jnp.sum(trace.episodes * inside, -1),
                                                              1.0)
  if reference is not None:
    optimal, random = reference
    ret = (ret - random) / (optimal - random)
  if not entropy_coef:
    return ret
  ent = jnp.sum(trace.entropy * inside, -1) / jnp.maximum(jnp.sum(inside, -1), 1.0)
  return ret + entropy_coef * ent / max_entropy


class AgentStep(NamedTuple):
  """One agent update (``make_agent_step``): the agent after it and what it learned from.

  Attributes:
    params: the agent's parameters after the update.
    opt_state: its optimiser state after the update.
    envs: the environments' ``EnvCarry`` after the rollout (``[B]``).
    rollout: the rollout the update learned from (``[T(+1), B, ...]``).
    stats: ``EpisodeStats`` of the episodes that ended in the rollout.
    result: ``inner_update``'s ``UpdateResult`` (the rule's targets, loss metrics).
    entropy: mean policy entropy over the rollout (0 without diagnostics).
  """
  params: PyTree
  opt_state: PyTree
  envs: EnvCarry
  rollout: Rollout
  stats: EpisodeStats
  result: UpdateResult
  entropy: jax.Array


def make_agent_step(env: Environment, rule: UpdateRule, optimizer: optax.GradientTransformation,
                    rollout_len: int, diagnostics: bool = True) -> Callable:
  """Builds ``step(net, env_params, params, opt_state, envs, key, rule_params, hypers,
  progress, meta_step=None) -> (AgentStep, meta_out)``: one agent update.

  The step acts ``rollout_len`` (T) steps in the ``B`` environments of ``envs``
  with ``net``'s policy (``lpg.rollout.unroll``), then updates the agent on
  that rollout under ``rule`` (``lpg.update.inner_update`` with ``hypers`` and
  ``progress``, n/N for lifetime-aware rules).  ``diagnostics`` adds the mean
  policy entropy over the rollout (one more forward pass).

  ``meta_step(rollout) -> (rule_params, net, meta_out)``, when given, runs
  between the rollout and the update and chooses the update's rule parameters
  and network (meta-gradient RL); ``meta_out`` is handed back (``None``
  without one).  Pure: scan it over updates and vmap it over agents.
  """
  def step(net: AgentNetwork, env_params: PyTree, params: PyTree, opt_state: PyTree,
           envs: EnvCarry, key: jax.Array, rule_params: PyTree, hypers: InnerHypers,
           progress: LifetimeProgress, meta_step: Callable | None = None
           ) -> tuple[AgentStep, Any]:
    rollout, envs, stats = unroll(env, env_params, lambda o: net.apply(params, o).logits,
                                  envs, key, rollout_len)
    update_net, meta_out = net, None
    if meta_step is not None:
      rule_params, update_net, meta_out = meta_step(rollout)
    res = inner_update(rule, rule_params, update_net, optimizer, params, opt_state, rollout,
                       hypers, progress=progress)
    ent = (jnp.mean(entropy_from_logits(net.apply(params, rollout.obs[:-1]).logits))
           if diagnostics else jnp.zeros(()))
    return AgentStep(res.params, res.opt_state, envs, rollout, stats, res, ent), meta_out

  return step


def make_lifetime(env: Environment, rule: UpdateRule, agent_config: AgentConfig,
                  optimizer_config: OptimizerConfig, config: LifetimeConfig,
                  diagnostics: bool = True) -> Callable:
  """Builds ``lifetime(rule_params, hypers, key, planned=None) -> LifetimeTrace [U]``.

  Args:
    env: a JAX-native environment (static); each call draws its task from
      ``key`` by ``env.sample_params``.
    rule: the update rule; lifetime-aware rules get n/N and log N.
    agent_config, optimizer_config: the agent and its inner optimiser.
    config: ``LifetimeConfig`` (``U = config.num_updates``).
    diagnostics: also record policy entropy (one more agent forward pass per
      update); off for the fastest fitness evaluations (entropy is then 0).

  The returned function is pure: ``hypers`` are ``InnerHypers`` scalars,
  ``key`` a PRNG key, ``planned`` (default ``U``) an int scalar ``<= U``.
  """
  net = make_agent_network(agent_config, env.obs_spec, env.num_actions, rule.head_sizes())
  optimizer = make_optimizer(optimizer_config)
  U, B = config.num_updates, config.num_envs
  agent_step = make_agent_step(env, rule, optimizer, config.rollout_len, diagnostics)

  def lifetime(rule_params: PyTree, hypers: InnerHypers, key: jax.Array,
               planned=None) -> LifetimeTrace:
    full_length = planned is None      # static: no skipped updates, no branch
    planned = jnp.asarray(U if planned is None else planned, jnp.int32)
    k_task, k_reset, k_agent, k_run = jax.random.split(key, 4)
    env_params = env.sample_params(k_task)
    params = net.init(k_agent)
    start = (params, optimizer.init(params), reset_envs(env, env_params, k_reset, B))

    def update(carry, n, k):
      params, opt_state, envs = carry
      progress = make_progress(n, planned)
      out, _ = agent_step(net, env_params, params, opt_state, envs, k, rule_params, hypers,
                          progress)
      pi_rms = jnp.sqrt(jnp.mean(jnp.square(out.result.targets.pi_hat)))
      row = LifetimeTrace(out.stats.return_sum, out.stats.count, progress.done / progress.planned,
                          jnp.ones(()), out.entropy, pi_rms)
      return (out.params, out.opt_state, out.envs), row

    def skip(carry, n, k):
      del k
      z = jnp.zeros(())
      return carry, LifetimeTrace(z, z, n / planned.astype(jnp.float32), z, z, z)

    def body(carry, xs):
      n, k = xs
      if full_length:
        return update(carry, n, k)
      return jax.lax.cond(n < planned, update, skip, carry, n, k)

    _, trace = jax.lax.scan(body, start, (jnp.arange(U), jax.random.split(k_run, U)))
    return trace

  return lifetime


def sample_planned(key: jax.Array, low: int, high: int) -> jax.Array:
  """``[]`` int32 lifetime length N, log-uniform on ``[low, high]`` (TA-LPG: 10..250)."""
  if not 1 <= low <= high:
    raise ValueError(f"lifetime lengths need 1 <= low <= high, got {low}, {high}")
  u = jax.random.uniform(key, minval=jnp.log(low), maxval=jnp.log(high + 1.0))
  return jnp.clip(jnp.floor(jnp.exp(u)), low, high).astype(jnp.int32)


class World(NamedTuple):
  """One training environment of a fitness: its lifetime, hypers and reference.

  Attributes:
    lifetime: from ``make_lifetime``.
    hypers: the agents' ``InnerHypers`` in this world.
    reference: ``(optimal, random)`` returns for normalisation, or ``None``.
    max_entropy: ``log |A|`` of its actions (scales ``fitness``'s entropy bonus).
  """
  lifetime: Callable
  hypers: InnerHypers
  reference: tuple[float, float] | None
  max_entropy: float = 1.0


def mean_fitness(worlds: Sequence[World], rule_params: PyTree, key: jax.Array, planned=None,
                 seeds: int = 1, window: float = 1.0, entropy_coef: float = 0.0) -> jax.Array:
  """``[]`` mean over ``worlds`` (equal weight) and ``seeds`` lifetimes of ``fitness``
  (with its entropy bonus of weight ``entropy_coef``: the lifetimes need ``diagnostics``).

  Each world's lifetimes draw their tasks and agents from ``fold_in(key, world)``;
  ``planned`` (N) is shared by all of them.  Pure; vmap it over rule parameters.
  """
  total = 0.0
  for e, world in enumerate(worlds):
    keys = jax.random.split(jax.random.fold_in(key, e), seeds)
    trace = jax.vmap(world.lifetime, (None, None, 0, None))(rule_params, world.hypers, keys,
                                                            planned)
    total = total + jnp.mean(fitness(trace, window, world.reference, entropy_coef,
                                     world.max_entropy))
  return total / len(worlds)
