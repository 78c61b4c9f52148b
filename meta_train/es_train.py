"""The meta-training job's evolution-strategies path (``--meta-optimizer es``).

``make_es_train(config, mesh) -> ESTrain(init, run, ...)`` has the interface of
``meta_train.trainer.MetaTrain`` that the job's host loop uses, so the ES path
shares its checkpoints, validation, metrics, progress and artifact:

* ``init(seed) -> ESTrainState``: the rule initialised as the meta-gradient
  path does, wrapped in an ``es.ESState`` (its mean is the flat rule).
* ``run(state, n) -> (state, ESMetrics[n])``: ``n`` generations
  (``meta_train.es.make_generation``) in one compiled scan; one generation is
  one meta-update.  Each member's fitness is ``lpg.lifetime.mean_fitness`` of
  ``es_seeds`` whole lifetimes per training env (with ``es_entropy_coef``, plus the
  agents' normalised policy entropy); the generation's lifetime
  length N is drawn once (``sample_planned``) and shared by its members.

The agents' inner hyperparameters are fixed (no bandit): per agent kind, the arm
``meta_train.validation.settled`` reports for an untouched bandit (the middle
candidates), so the artifact's ``meta_test`` settings and validation use what
training used.
``ESTrainState.rule_params`` is ``unravel(es.mean)``, kept in step with the mean.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lpg.lifetime import LifetimeConfig, World, make_lifetime, mean_fitness, sample_planned
from lpg.rule import make_hypers
from lpg.types import PyTree
from meta_train import bandit, es, validation
from meta_train.config import TrainConfig
from meta_train.logging_utils import MetricsLogger
from meta_train.trainer import MetaSetup, env_setup, make_setup


class ESTrainState(NamedTuple):
  """An ES run's state, checkpointed whole (all arrays)."""
  step: jax.Array             # [] int32 generations done.
  es: es.ESState
  rule_params: PyTree         # unravel(es.mean): the rule validated and exported.
  bandit: bandit.BanditState  # untouched: fixes the agents' hyperparameters.
  skipped: jax.Array          # [] int32 generations whose mean became non-finite.


class ESMetrics(NamedTuple):
  """Per generation scalars."""
  fitness_mean: jax.Array
  fitness_max: jax.Array
  grad_norm: jax.Array
  mean_norm: jax.Array
  planned: jax.Array          # the generation's lifetime length N.
  skipped: jax.Array


class ESTrain(NamedTuple):
  init: Callable
  run: Callable
  shardings: None
  with_rule: Callable         # (state, rule_params) -> state starting from those params.
  references: tuple
  setup: MetaSetup


def es_config(config: TrainConfig) -> es.ESConfig:
  return es.ESConfig(population=config.es_population, sigma=config.es_sigma,
                     learning_rate=config.es_lr)


def make_worlds(setup: MetaSetup) -> list[World]:
  """One ``World`` per training env: whole lifetimes with the settled arm's hypers."""
  c = setup.config
  settings = validation.settled(setup, bandit.init(*setup.arm_table.shape[:2]))
  life = LifetimeConfig(c.lifetime_updates, c.meta.rollout_len, c.meta.num_envs)
  worlds = []
  for name, ref in zip(c.envs, setup.references):
    env, agent, opt, _ = env_setup(name, c)
    arm = settings[validation.kind_of(name)]
    hypers = make_hypers(arm["learning_rate"], arm["alpha_y"], c.rule_gamma)
    # Entropy costs one more agent forward pass per update: recorded only when scored.
    worlds.append(World(make_lifetime(env, setup.rule, agent, opt, life,
                                      diagnostics=c.es_entropy_coef > 0),
                        hypers, ref, float(np.log(max(env.num_actions, 2)))))
  return worlds


def make_es_train(config: TrainConfig, mesh=None) -> ESTrain:
  """Builds ``init`` and the compiled ``run``; with a ``mesh`` the members are sharded."""
  setup = make_setup(config)
  cfg = es_config(config)
  worlds = make_worlds(setup)
  shapes = jax.eval_shape(setup.rule.init, jax.random.PRNGKey(0))
  _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
  varied = bool(config.lifetime_updates_min)

  def fitness_fn(params, key, planned=None):
    return mean_fitness(worlds, params, key, planned, config.es_seeds, config.es_window,
                        config.es_entropy_coef)

  context_fn = ((lambda k: sample_planned(k, config.lifetime_updates_min,
                                          config.lifetime_updates)) if varied else None)
  generation = es.make_generation(fitness_fn, unravel, cfg, mesh=mesh, context_fn=context_fn)

  def init(seed: int) -> ESTrainState:
    key = jax.random.PRNGKey(seed)
    k_rule, _ = jax.random.split(key)  # the meta-gradient path's initial rule
    state, _ = es.init(setup.rule.init(k_rule), cfg, jax.random.fold_in(key, 3))
    return ESTrainState(step=state.step, es=state, rule_params=unravel(state.mean),
                        bandit=bandit.init(*setup.arm_table.shape[:2]),
                        skipped=jnp.zeros((), jnp.int32))

  def with_rule(state: ESTrainState, rule_params: PyTree) -> ESTrainState:
    fresh, _ = es.init(rule_params, cfg, state.es.key)
    return state._replace(es=fresh, rule_params=unravel(fresh.mean))

  def step(state: ESTrainState, _):
    # The generation's N, drawn from the key es.make_generation gives its context_fn.
    k_context = jax.random.split(jax.random.fold_in(state.es.key, state.es.step), 3)[2]
    new, m = generation(state.es)
    planned = (context_fn(k_context) if varied
               else jnp.asarray(config.lifetime_updates, jnp.int32))
    bad = ~jnp.isfinite(m.mean_norm)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(bad, a, b), state.es, new)
    out = state._replace(step=new.step, es=new, rule_params=unravel(new.mean),
                         skipped=state.skipped + bad.astype(jnp.int32))
    return out, ESMetrics(m.fitness_mean, m.fitness_max, m.grad_norm, m.mean_norm, planned, bad)

  run = jax.jit(lambda state, n: jax.lax.scan(step, state, None, length=n), static_argnums=1)
  return ESTrain(init=init, run=run, shardings=None, with_rule=with_rule,
                 references=setup.references, setup=setup)


class ESMetricsLogger(MetricsLogger):
  """``metrics.jsonl`` lines of an ES run: per ``log_every`` generations ``meta_update``,
  ``wall_time_s``, ``fitness_mean`` / ``fitness_max`` (means over the interval of each
  generation's member mean and best), ``grad_norm``, ``mean_norm``, ``lifetime_updates``
  (mean N), ``skipped``, ``skipped_total``, ``agent_steps``, ``agent_steps_per_s``."""

  def flush(self, step: int, wall: float) -> dict | None:
    if not self.items:
      return None
    m = type(self.items[0])(*[np.stack(x) for x in zip(*self.items)])
    n = len(self.items)
    skipped = int(m.skipped.sum())
    self.skipped_total += skipped
    line = {"meta_update": step, "wall_time_s": round(wall, 2),
            "fitness_mean": float(m.fitness_mean.mean()),
            "fitness_max": float(m.fitness_max.mean()),
            "grad_norm": float(m.grad_norm.mean()), "mean_norm": float(m.mean_norm[-1]),
            "lifetime_updates": float(m.planned.mean()),
            "skipped": skipped, "skipped_total": self.skipped_total,
            "agent_steps": step * self.config.agent_steps_per_update,
            "agent_steps_per_s": n * self.config.agent_steps_per_update / max(self.seconds, 1e-9)}
    self.write_line(line)
    self._reset()
    return {"fit": f"{line['fitness_mean']:.3f}", "steps/s": f"{line['agent_steps_per_s']:,.0f}"}
