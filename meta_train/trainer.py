"""One compiled meta-update over a staggered population of lifetimes.

``make_meta_train(config) -> MetaTrain(init, run, ...)``:

* ``init(seed) -> TrainState``: rule, meta-optimiser, population, bandit.
* ``run(state, n) -> (state, StepMetrics[n])``: ``n`` meta-updates scanned in
  one compiled call; the host only logs, validates and checkpoints between calls.

One meta-update (``meta_step``) is a chain of small pure functions:

1. ``estimate(setup, rule_params, groups, key)``: the meta-gradient of every
   environment group (``lpg.meta_objective.population_meta_grad``, chunked as
   configured), averaged with equal weight, and the lifetimes advanced by K
   updates.  Another estimator with the same signature (evolution strategies
   over whole lifetimes, say) can be passed to ``make_meta_train``.
2. ``apply_meta_update``: clipped Adam on the rule, skipped when non-finite.
3. ``bookkeep`` per group: return tracking, bandit credit for lifetimes that
   ended, fresh lifetimes drawn from the bandit (``meta_train.population``), on
   levels drawn by the level curriculum where one is on (``meta_train.levels``).

The population is grouped by training environment (environments differ in
observation shape, so each group is its own ``vmap``).  Each meta-update draws
its randomness from ``fold_in(key, step)``, so a run resumed from a checkpoint
is bit-for-bit the uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs as envs_lib
from lpg.lifetime import sample_planned
from lpg.meta_objective import MetaMetrics, MetaProblem, population_meta_grad
from lpg.networks import AgentConfig
from lpg.rule import LPGRule, make_hypers
from lpg.types import PyTree
from lpg.update import OptimizerConfig
from meta_train import bandit, levels, population
from meta_train.config import TrainConfig
from meta_train.population import EnvGroup


class TrainState(NamedTuple):
  """Everything a meta-training run carries; all arrays, checkpointed whole."""
  step: jax.Array             # [] int32 meta-updates done.
  rule_params: PyTree
  meta_opt_state: PyTree
  groups: tuple               # one EnvGroup per training environment (leading [P_e]).
  bandit: bandit.BanditState  # [E, A] arm statistics.
  key: jax.Array              # [2] uint32 base key of the run.
  skipped: jax.Array          # [] int32 non-finite meta-updates skipped.
  curricula: tuple = ()       # per env its CurriculumState, or None (meta_train.levels).


class GroupStats(NamedTuple):
  """One environment's summary of one meta-update (scalars)."""
  episode_return_sum: jax.Array  # returns of episodes that ended during the K+1 rollouts.
  episodes: jax.Array
  finished_return_sum: jax.Array  # final returns of lifetimes credited to the bandit.
  finished_norm_sum: jax.Array
  finished: jax.Array            # lifetimes credited to the bandit.
  entropy: jax.Array             # mean policy entropy.
  pi_hat_sq: jax.Array           # mean squared pi_hat.
  curriculum: jax.Array          # [len(levels.STATS)] level statistics (NaN: no curriculum).


class StepMetrics(NamedTuple):
  """Per meta-update metrics: scalars, ``[E]`` per environment, ``[E, A]`` per arm."""
  meta_loss: jax.Array
  grad_norm: jax.Array
  skipped: jax.Array
  episode_return_sum: jax.Array
  episodes: jax.Array
  finished_return_sum: jax.Array
  finished_norm_sum: jax.Array
  finished: jax.Array
  entropy: jax.Array
  pi_hat_sq: jax.Array
  curriculum: jax.Array
  arm_probs: jax.Array


@dataclasses.dataclass(frozen=True)
class MetaSetup:
  """The static side of a job: config, rule, one ``MetaProblem`` per env, the bandit's arms."""
  config: TrainConfig
  rule: LPGRule
  problems: tuple[MetaProblem, ...]
  arm_table: np.ndarray       # [E, A, 2] (learning rate, alpha_y) of each arm.
  references: tuple           # per env (optimal, random) returns or None.
  curricula: tuple = ()       # per env its Curriculum, or None (meta_train.levels).

  @property
  def num_envs(self) -> int:
    return len(self.problems)


class MetaTrain(NamedTuple):
  init: Callable
  run: Callable
  shardings: TrainState | None
  problems: tuple
  arm_table: np.ndarray       # [E, A, 2] (learning rate, alpha_y) of each arm.
  references: tuple           # per env (optimal, random) or None.
  setup: MetaSetup


def env_setup(name: str, config: TrainConfig):
  """Environment, agent, optimiser and the bandit's candidate learning rates for one env."""
  env = envs_lib.make(name)
  if env.obs_spec.kind == "index":
    return env, AgentConfig("tabular"), OptimizerConfig("sgd"), config.tabular_lrs
  return (env, AgentConfig("mlp", hidden=config.mlp_hidden), OptimizerConfig("adam"),
          config.network_lrs)


def reference(name: str):
  """(optimal, random) returns of ``name`` for normalised scores, or None."""
  from envs import returns
  return returns.reference_pair(name)


def make_setup(config: TrainConfig) -> MetaSetup:
  rule = LPGRule(config.rule)
  setups = [env_setup(name, config) for name in config.envs]
  problems = tuple(MetaProblem(env, rule, agent, opt, config.meta)
                   for env, agent, opt, _ in setups)
  arm_table = np.array([[(lr, ay) for lr, ay in itertools.product(lrs, config.alpha_ys)]
                        for _, _, _, lrs in setups], np.float32)
  return MetaSetup(config, rule, problems, arm_table,
                   tuple(reference(name) for name in config.envs),
                   levels.make_curricula(config.curriculum, [p.env for p in problems]))


def make_meta_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping then Adam on the rule's parameters."""
  return optax.chain(optax.clip_by_global_norm(config.meta_max_grad_norm),
                     optax.adam(config.meta_lr))


# ---------------------------------------------------------------- lifetimes
def lifetime_lengths(config: TrainConfig, key: jax.Array, num: int):
  """Planned lengths N of ``num`` new lifetimes: ``lifetime_updates``, or ``[num]`` drawn
  log-uniformly from ``[lifetime_updates_min, lifetime_updates]`` when that is set."""
  if not config.lifetime_updates_min:
    return jnp.full((num,), config.lifetime_updates, jnp.int32)
  return jax.vmap(lambda k: sample_planned(k, config.lifetime_updates_min,
                                           config.lifetime_updates))(jax.random.split(key, num))


def fresh_lives(setup: MetaSetup, e: int, key: jax.Array, arms: jax.Array, level_seeds=None):
  """``[P_e]`` new lifetimes on env ``e`` with the arms' hyperparameters (``arms`` ``[P_e]``),
  on freshly drawn tasks or on the levels of ``level_seeds`` ``[P_e]`` (a procgen family's)."""
  c = setup.config
  lr = jnp.asarray(setup.arm_table[e, :, 0])[arms]
  ay = jnp.asarray(setup.arm_table[e, :, 1])[arms]
  hypers = make_hypers(lr, ay, jnp.full(arms.shape, c.rule_gamma, jnp.float32))
  horizons = lifetime_lengths(c, jax.random.fold_in(key, 7), c.agents_per_env)
  level_params = None if level_seeds is None else jax.vmap(setup.problems[e].env.level)(
      level_seeds)
  return jax.vmap(setup.problems[e].init_lifetime)(
      jax.random.split(key, c.agents_per_env), hypers, horizons, level_params)


def init_state(setup: MetaSetup, meta_opt: optax.GradientTransformation, seed: int) -> TrainState:
  c = setup.config
  key = jax.random.PRNGKey(seed)
  k_rule, k_pop = jax.random.split(key)
  rule_params = setup.rule.init(k_rule)
  b = bandit.init(*setup.arm_table.shape[:2])
  ages = (population.stagger_ages(c.agents_per_env, c.lifetime_updates, c.meta.num_inner)
          if c.stagger else None)
  groups = []
  for e in range(setup.num_envs):
    k_arm, k_life = jax.random.split(jax.random.fold_in(k_pop, e))
    arms = bandit.sample(k_arm, b, e, c.agents_per_env, c.bandit_temperature, c.bandit_bonus)
    groups.append(population.first_generation(fresh_lives(setup, e, k_life, arms), arms, ages))
  return TrainState(step=jnp.zeros((), jnp.int32), rule_params=rule_params,
                    meta_opt_state=meta_opt.init(rule_params), groups=tuple(groups), bandit=b,
                    key=key, skipped=jnp.zeros((), jnp.int32),
                    curricula=levels.init_states(setup.curricula))


# ---------------------------------------------------------------- one meta-update
def estimate(setup: MetaSetup, rule_params: PyTree, groups: tuple, key: jax.Array):
  """The meta-gradient of every group, averaged with equal weight per environment.

  Returns:
    ``(loss, grads, lives, metrics)``: scalar loss, gradient w.r.t. ``rule_params``,
    and per group the lifetimes after K updates and their ``MetaMetrics`` (``[P_e]``).
  """
  loss, grads, lives, metrics = 0.0, None, [], []
  for e, (problem, group) in enumerate(zip(setup.problems, groups)):
    keys = jax.random.split(jax.random.fold_in(key, e), setup.config.agents_per_env)
    g_loss, g_grads, g_lives, g_metrics = population_meta_grad(
        problem, rule_params, group.lives, keys, chunk=setup.config.agent_chunk)
    loss = loss + g_loss / setup.num_envs
    g_grads = jax.tree_util.tree_map(lambda g: g / setup.num_envs, g_grads)
    grads = g_grads if grads is None else jax.tree_util.tree_map(jnp.add, grads, g_grads)
    lives.append(g_lives)
    metrics.append(g_metrics)
  return loss, grads, tuple(lives), tuple(metrics)


def all_finite(tree) -> jax.Array:
  """[] bool: every floating-point leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def apply_meta_update(meta_opt: optax.GradientTransformation, rule_params: PyTree,
                      opt_state: PyTree, grads: PyTree, loss: jax.Array):
  """One meta-optimiser step, kept only if the loss, gradient and new rule are finite.

  Returns:
    ``(rule_params, opt_state, ok, grad_norm)``; where ``ok`` is False the inputs
    are returned unchanged.
  """
  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = meta_opt.update(grads, opt_state, rule_params)
  new_params = optax.apply_updates(rule_params, updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(new_params)
  keep = lambda n, o: jnp.where(ok, n, o)
  return (jax.tree_util.tree_map(keep, new_params, rule_params),
          jax.tree_util.tree_map(keep, new_opt_state, opt_state), ok, grad_norm)


def bookkeep(setup: MetaSetup, e: int, group: EnvGroup, lives, metrics: MetaMetrics,
             b: bandit.BanditState, key: jax.Array, table=None):
  """Return tracking, bandit credit and lifetime turnover of env ``e`` after one meta-update.

  Args:
    group: env ``e``'s group before the meta-update; ``lives``, ``metrics``: ``[P_e]``
      from ``estimate``; ``b``: the bandit; ``key``: for new arms and lifetimes;
      ``table``: env ``e``'s ``CurriculumState`` (None: no curriculum).
  Returns:
    ``(group, bandit, GroupStats, table)`` after the update.
  """
  c = setup.config
  ema, seen = population.track_returns(group.ret_ema, group.ret_seen, metrics, c.return_ema_decay)
  ended = population.lifetime_ended(lives)
  credit = ended & group.scored & seen
  final_norm = population.normalise(setup.references[e], ema)
  b = bandit.update(b, e, group.arms, final_norm, credit, c.bandit_window)
  k_arm, k_new = jax.random.split(key)
  arms = bandit.sample(k_arm, b, e, c.agents_per_env, c.bandit_temperature, c.bandit_bonus)
  seeds, level_stats = None, levels.no_stats()
  if table is not None:
    table, seeds, level_stats = levels.turnover_levels(
        setup.curricula[e], c.curriculum, setup.problems[e].env, table, lives, ema,
        credit, ended, metrics, jax.random.fold_in(key, 11))
  new_group = population.turnover(group, lives, ema, seen, ended,
                                  fresh_lives(setup, e, k_new, arms, seeds), arms)
  stats = GroupStats(
      episode_return_sum=metrics.return_sum.sum(), episodes=metrics.episodes.sum(),
      finished_return_sum=jnp.sum(jnp.where(credit, ema, 0.0)),
      finished_norm_sum=jnp.sum(jnp.where(credit, final_norm, 0.0)),
      finished=credit.sum().astype(jnp.float32), entropy=metrics.entropy.mean(),
      pi_hat_sq=metrics.pi_hat_sq.mean(), curriculum=level_stats)
  return new_group, b, stats, table


def meta_step(setup: MetaSetup, meta_opt: optax.GradientTransformation, estimator: Callable,
              state: TrainState) -> tuple[TrainState, StepMetrics]:
  """One meta-update: estimate, update the rule, then book-keep every group."""
  key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
  k_loss, k_life = jax.random.split(key)
  loss, grads, lives, metrics = estimator(setup, state.rule_params, state.groups, k_loss)
  rule_params, opt_state, ok, grad_norm = apply_meta_update(
      meta_opt, state.rule_params, state.meta_opt_state, grads, loss)
  b, groups, stats, tables = state.bandit, [], [], []
  for e in range(setup.num_envs):
    group, b, s, table = bookkeep(setup, e, state.groups[e], lives[e], metrics[e], b,
                                  jax.random.fold_in(k_life, e), state.curricula[e])
    groups.append(group)
    stats.append(s)
    tables.append(table)
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *stats)
  c = setup.config
  new_state = TrainState(step=state.step + 1, rule_params=rule_params, meta_opt_state=opt_state,
                         groups=tuple(groups), bandit=b, key=state.key,
                         skipped=state.skipped + (~ok).astype(jnp.int32),
                         curricula=tuple(tables))
  return new_state, StepMetrics(
      meta_loss=loss, grad_norm=grad_norm, skipped=~ok, **stacked._asdict(),
      arm_probs=bandit.probabilities(b, c.bandit_temperature, c.bandit_bonus))


def make_meta_train(config: TrainConfig, mesh=None, estimator: Callable = estimate) -> MetaTrain:
  """Builds the ``init`` and compiled ``run`` of a meta-training job.

  With a ``mesh`` (see ``meta_train.distributed``) the population is sharded
  over its devices and the rule replicated; ``init`` and ``run`` are compiled
  with those shardings.  ``estimator`` has ``estimate``'s signature.
  """
  setup = make_setup(config)
  meta_opt = make_meta_optimizer(config)
  init = lambda seed: init_state(setup, meta_opt, seed)

  def run_fn(state: TrainState, n: int):
    return jax.lax.scan(lambda s, _: meta_step(setup, meta_opt, estimator, s), state, None,
                        length=n)

  if mesh is None:
    run = jax.jit(run_fn, static_argnums=1, donate_argnums=0)
    init_fn, shardings = init, None
  else:
    from meta_train import distributed
    distributed.check_population(config.agents_per_env, config.agent_chunk, mesh.size)
    shardings = distributed.state_shardings(jax.eval_shape(init, config.seed), mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    run = jax.jit(run_fn, static_argnums=1, donate_argnums=0, in_shardings=(shardings,),
                  out_shardings=(shardings, replicated))
    init_fn = jax.jit(init, static_argnums=0, out_shardings=shardings)
  return MetaTrain(init=init_fn, run=run, shardings=shardings, problems=setup.problems,
                   arm_table=setup.arm_table, references=setup.references, setup=setup)
