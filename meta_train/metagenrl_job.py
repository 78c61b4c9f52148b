"""The meta-training job's MetaGenRL path (``lpg-meta-train --family metagenrl``).

``build(config, devices) -> (MGTrain, MGMetricsLogger, description)`` gives the job
(``meta_train.job``) a trainer with the interface of ``meta_train.trainer.MetaTrain``,
so MetaGenRL shares the job's run directory, checkpoints (resume bit for bit),
``--time-limit``, SIGINT checkpoint, held-out validation (``meta_train.validation``:
fresh agents trained by the objective through ``lpg.lifetime``) and artifacts
(``rule.pkl`` / ``rule_best.pkl`` of family ``metagenrl``):

* ``init(seed) -> MGTrainState``: a fresh objective and one population of
  ``agents_per_env`` agents per training world (``meta_train.metagenrl``), with
  staggered ages.
* ``run(state, n) -> (state, MGMetrics [n])``: ``n`` meta-training steps
  (``metagenrl.make_meta_step``) in one compiled scan; one step is one meta-update.
  A step whose objective becomes non-finite keeps the previous objective and its
  optimiser state (the agents move on) and counts as skipped.

Agents: tabular worlds get tabular SGD agents, the others MLP Adam agents
(``meta_train.trainer.env_setup``), their step sizes fixed per kind to the arm an
untouched bandit settles on (``validation.settled``: with one candidate per kind, as
the MetaGenRL presets have, that candidate), so the artifact's ``meta_test``
settings and validation use what training used.  Runs on one device.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lpg.metagenrl import MetaGenRLRule
from lpg.rule import make_hypers
from lpg.types import PyTree
from meta_train import bandit, metagenrl, validation
from meta_train.config import TrainConfig
from meta_train.logging_utils import MetricsLogger
from meta_train.trainer import MetaSetup, all_finite, env_setup, reference


class MGTrainState(NamedTuple):
  """A MetaGenRL run's state, checkpointed whole (all arrays)."""
  step: jax.Array             # [] int32 meta-updates done.
  rule_params: PyTree         # the objective's parameters.
  meta_opt_state: PyTree
  populations: tuple          # one metagenrl.AgentState with leading [P] per world.
  key: jax.Array
  bandit: bandit.BanditState  # untouched: fixes the agents' step sizes.
  skipped: jax.Array          # [] int32 steps whose objective became non-finite.


class MGMetrics(NamedTuple):
  """Per meta-update, per training world ``[E]`` (``skipped`` a scalar)."""
  return_sum: jax.Array       # returns of the episodes that ended, summed over agents.
  episodes: jax.Array
  critic_loss: jax.Array      # mean over agents and replay steps.
  meta_value: jax.Array       # the critic's value of the updated policies.
  entropy: jax.Array          # their policy entropy.
  skipped: jax.Array


class MGTrain(NamedTuple):
  init: Callable
  run: Callable
  shardings: None
  with_rule: Callable         # (state, rule_params) -> state with that objective.
  references: tuple
  setup: MetaSetup


def mgenrl_config(config: TrainConfig) -> metagenrl.MetaGenRLTrainConfig:
  """The ``MetaGenRLTrainConfig`` of a job: ``config.mgenrl`` with the job's population,
  rollout, K, discount, meta step, clip and lifetime length."""
  return dataclasses.replace(
      config.mgenrl or metagenrl.MetaGenRLTrainConfig(), num_agents=config.agents_per_env,
      rollout_len=config.meta.rollout_len, num_envs=config.meta.num_envs,
      num_inner=config.meta.num_inner, gamma=config.rule_gamma, meta_lr=config.meta_lr,
      meta_grad_clip=config.meta_max_grad_norm, lifetime_updates=config.lifetime_updates)


def make_setup(config: TrainConfig) -> MetaSetup:
  """Objective, one ``MetaGenRLProblem`` per world, arms and references."""
  rule, mg = MetaGenRLRule(config.rule), mgenrl_config(config)
  setups = [env_setup(name, config) for name in config.envs]
  problems = tuple(metagenrl.MetaGenRLProblem(env, rule, agent, opt, mg)
                   for env, agent, opt, _ in setups)
  arm_table = np.array([list(itertools.product(lrs, config.alpha_ys)) for *_, lrs in setups],
                       np.float32)
  return MetaSetup(config, rule, problems, arm_table,
                   tuple(reference(name) for name in config.envs))


def world_hypers(setup: MetaSetup) -> list:
  """Per world the ``InnerHypers`` of its agent kind's settled arm."""
  c = setup.config
  settings = validation.settled(setup, bandit.init(*setup.arm_table.shape[:2]))
  arms = [settings[validation.kind_of(name)] for name in c.envs]
  return [make_hypers(a["learning_rate"], a["alpha_y"], c.rule_gamma) for a in arms]


def _reduce(world_metrics: tuple, skipped: jax.Array) -> MGMetrics:
  """Per-world ``StepMetrics`` ``[P]`` -> ``MGMetrics`` ``[E]``."""
  stack = lambda f, op: jnp.stack([op(getattr(m, f)) for m in world_metrics])
  return MGMetrics(stack("return_sum", jnp.sum), stack("episodes", jnp.sum),
                   stack("critic_loss", jnp.mean), stack("meta_value", jnp.mean),
                   stack("entropy", jnp.mean), skipped)


def make_mgenrl_train(config: TrainConfig) -> MGTrain:
  """Builds ``init`` and the compiled ``run`` (see the module docstring)."""
  setup = make_setup(config)
  problems, hypers = setup.problems, world_hypers(setup)
  meta_step = metagenrl.make_meta_step(problems)

  def init(seed: int) -> MGTrainState:
    ms = metagenrl.init_meta_state(problems, hypers, jax.random.PRNGKey(seed))
    return MGTrainState(ms.step, ms.rule_params, ms.meta_opt_state, ms.populations, ms.key,
                        bandit.init(*setup.arm_table.shape[:2]), jnp.zeros((), jnp.int32))

  def with_rule(state: MGTrainState, rule_params: PyTree) -> MGTrainState:
    opt_state = metagenrl.make_meta_optimizer(mgenrl_config(config)).init(rule_params)
    return state._replace(rule_params=rule_params, meta_opt_state=opt_state)

  def step(state: MGTrainState, _):
    ms = metagenrl.MetaState(state.rule_params, state.meta_opt_state, state.populations,
                             state.key, state.step)
    new, world_metrics = meta_step(ms)
    bad = ~all_finite(new.rule_params)
    keep = lambda old, fresh: jax.tree_util.tree_map(lambda a, b: jnp.where(bad, a, b), old, fresh)
    out = state._replace(step=new.step, rule_params=keep(state.rule_params, new.rule_params),
                         meta_opt_state=keep(state.meta_opt_state, new.meta_opt_state),
                         populations=new.populations, key=new.key,
                         skipped=state.skipped + bad.astype(jnp.int32))
    return out, _reduce(world_metrics, bad)

  run = jax.jit(lambda state, n: jax.lax.scan(step, state, None, length=n), static_argnums=1)
  return MGTrain(init=init, run=run, shardings=None, with_rule=with_rule,
                 references=setup.references, setup=setup)


def build(config: TrainConfig, devices) -> tuple:
  """``(trainer, logger class, description)`` for ``meta_train.job.build``."""
  mt = make_mgenrl_train(config)
  mg = mgenrl_config(config)
  return mt, MGMetricsLogger, (
      f"MetaGenRL: {len(config.envs)} envs x {config.agents_per_env} agents = "
      f"{config.population} agents; K={mg.num_inner}, replay ratio {mg.replay_ratio}, "
      f"buffer {mg.buffer_segments} segments; {len(devices)} device(s) available, 1 used")


class MGMetricsLogger(MetricsLogger):
  """``metrics.jsonl`` lines of a MetaGenRL run: per ``log_every`` meta-updates
  ``meta_update``, ``wall_time_s``, ``mean_episode_return`` / ``mean_normalised_return``
  (over worlds with episodes), ``critic_loss``, ``meta_value`` (the critic's value of
  the updated policies), ``policy_entropy``, ``skipped``, ``skipped_total``,
  ``agent_steps``, ``agent_steps_per_s`` and per world ``envs``: ``episode_return``,
  ``normalised_return``, ``episodes``, ``critic_loss``, ``meta_value``,
  ``policy_entropy``."""

  def flush(self, step: int, wall: float) -> dict | None:
    if not self.items:
      return None
    m = type(self.items[0])(*[np.stack(x) for x in zip(*self.items)])
    per_env, rets, norms = {}, [], []
    for e, name in enumerate(self.names):
      eps = float(m.episodes[:, e].sum())
      ret = float(m.return_sum[:, e].sum() / eps) if eps else None
      norm = self._normalise(e, ret)
      per_env[name] = {"episode_return": ret, "normalised_return": norm, "episodes": eps,
                       "critic_loss": float(m.critic_loss[:, e].mean()),
                       "meta_value": float(m.meta_value[:, e].mean()),
                       "policy_entropy": float(m.entropy[:, e].mean())}
      rets += [ret] if ret is not None else []
      norms += [norm] if norm is not None else []
    skipped = int(m.skipped.sum())
    self.skipped_total += skipped
    steps = self.config.agent_steps_per_update
    line = {"meta_update": step, "wall_time_s": round(wall, 2),
            "mean_episode_return": float(np.mean(rets)) if rets else None,
            "mean_normalised_return": float(np.mean(norms)) if norms else None,
            "critic_loss": float(np.nanmean(m.critic_loss)),
            "meta_value": float(np.nanmean(m.meta_value)),
            "policy_entropy": float(np.nanmean(m.entropy)),
            "skipped": skipped, "skipped_total": self.skipped_total,
            "agent_steps": step * steps,
            "agent_steps_per_s": len(self.items) * steps / max(self.seconds, 1e-9),
            "envs": per_env}
    self.write_line(line)
    self._reset()
    return {"ret": "nan" if line["mean_normalised_return"] is None
            else f"{line['mean_normalised_return']:.2f}",
            "steps/s": f"{line['agent_steps_per_s']:,.0f}"}
