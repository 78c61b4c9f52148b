"""One compiled meta-update over a staggered population of lifetimes.

``make_meta_train(config) -> MetaTrain(init, run)``:

* ``init(seed) -> TrainState``: rule, meta-optimiser, population, bandit.
* ``run(state, n) -> (state, StepMetrics[n])``: ``n`` meta-updates scanned in
  one compiled call; the host only logs and checkpoints between calls.

The population is grouped by training environment (environments differ in
observation shape, so each group is its own ``vmap``); the groups are traced
into the same compiled step and their meta-losses averaged with equal weight.
A lifetime that reaches ``lifetime_updates`` (or whose agent became non-finite)
is replaced inside the compiled step by a fresh agent on a freshly drawn task
with hyperparameters from the bandit (``jnp.where`` masking, no Python branch).
Each meta-update draws its randomness from ``fold_in(key, step)``, so a run
resumed from a checkpoint is bit-for-bit the uninterrupted run.
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs as envs_lib
from lpg.meta_objective import Lifetime, MetaProblem
from lpg.networks import AgentConfig
from lpg.rule import LPGRule, make_hypers
from lpg.types import PyTree
from lpg.update import OptimizerConfig
from meta_train import bandit
from meta_train.config import ALPHA_YS, NETWORK_LRS, TABULAR_LRS, TrainConfig


class TrainState(NamedTuple):
  """Everything a meta-training run carries; all arrays, checkpointed whole.

  ``lives``, ``arms``, ``ret_ema``, ``ret_seen`` and ``scored`` are tuples with
  one entry per training environment, each with a leading ``[agents_per_env]``.
  """
  step: jax.Array             # [] int32 meta-updates done.
  rule_params: PyTree
  meta_opt_state: PyTree
  lives: tuple
  arms: tuple                 # [P_e] int32 bandit arm of each lifetime.
  ret_ema: tuple              # [P_e] float32 recent mean episode return.
  ret_seen: tuple             # [P_e] bool, ret_ema holds a value.
  scored: tuple               # [P_e] bool, the lifetime counts for the bandit.
  bandit: bandit.BanditState
  key: jax.Array              # [2] uint32 base key of the run.
  skipped: jax.Array          # [] int32 non-finite meta-updates skipped.


class StepMetrics(NamedTuple):
  """Per meta-update metrics (``[E]`` per environment, ``[E, A]`` per arm)."""
  meta_loss: jax.Array
  grad_norm: jax.Array
  skipped: jax.Array
  episode_return_sum: jax.Array
  episodes: jax.Array
  finished_return_sum: jax.Array
  finished_norm_sum: jax.Array
  finished: jax.Array
  arm_probs: jax.Array
  entropy: jax.Array
  pi_hat_sq: jax.Array


class MetaTrain(NamedTuple):
  init: callable
  run: callable
  shardings: TrainState | None
  problems: tuple
  arm_table: np.ndarray       # [E, A, 2] (learning rate, alpha_y) of each arm.
  references: tuple           # per env (optimal, random) or None.


def env_setup(name: str, rule: LPGRule, config: TrainConfig):
  """Agent kind, optimiser and the bandit's candidate learning rates for one env."""
  env = envs_lib.make(name)
  if env.obs_spec.kind == "index":
    return env, AgentConfig("tabular"), OptimizerConfig("sgd"), TABULAR_LRS
  return (env, AgentConfig("mlp", hidden=config.mlp_hidden), OptimizerConfig("adam"),
          NETWORK_LRS)


def reference(name: str):
  """(optimal, random) returns of ``name`` for normalised scores, or None."""
  try:
    from envs import returns
    ref = returns.reference_returns(name)
  except (ImportError, ValueError, OSError, KeyError):
    return None
  if ref.get("optimal") is None or ref["optimal"] == ref["random"]:
    return None
  return float(ref["optimal"]), float(ref["random"])


def _tree_where(mask, a, b):
  """Per-agent select between two batched pytrees (``mask`` ``[P]``)."""
  def sel(x, y):
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, y)
  return jax.tree_util.tree_map(sel, a, b)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _agent_finite(lives: Lifetime) -> jax.Array:
  """``[P]`` bool: the agent's parameters are finite."""
  leaves = jax.tree_util.tree_leaves(lives.agent_params)
  per = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in leaves]
  return functools.reduce(jnp.logical_and, per)


def make_meta_train(config: TrainConfig, mesh=None) -> MetaTrain:
  """Builds the ``init`` and compiled ``run`` of a meta-training job.

  With a ``mesh`` (see ``meta_train.distributed``) the population is sharded
  over its devices and the rule replicated; ``init`` and ``run`` are compiled
  with those shardings.
  """
  rule = LPGRule(config.rule)
  setups = [env_setup(name, rule, config) for name in config.envs]
  problems = tuple(MetaProblem(env, rule, agent, opt, config.meta) for env, agent, opt, _ in setups)
  arm_table = np.array([[(lr, ay) for lr, ay in itertools.product(lrs, ALPHA_YS)]
                        for _, _, _, lrs in setups], np.float32)           # [E, A, 2]
  references = tuple(reference(name) for name in config.envs)
  num_envs, num_arms = arm_table.shape[:2]
  pe = config.agents_per_env
  K = config.meta.num_inner
  meta_opt = optax.chain(optax.clip_by_global_norm(config.meta_max_grad_norm),
                         optax.adam(config.meta_lr))
  arms_lr = jnp.asarray(arm_table[..., 0])
  arms_ay = jnp.asarray(arm_table[..., 1])

  def hypers_for(e, arms):
    return make_hypers(arms_lr[e][arms], arms_ay[e][arms],
                       jnp.full(arms.shape, config.rule_gamma, jnp.float32))

  def normalise(e, value):
    ref = references[e]
    if ref is None:
      return value
    opt, rnd = ref
    return (value - rnd) / (opt - rnd)

  def new_lives(e, key, arms):
    return jax.vmap(problems[e].init_lifetime)(jax.random.split(key, pe), hypers_for(e, arms))

  chunk = config.agent_chunk or pe
  n_chunks = pe // chunk

  def group_meta_grad(problem, rule_params, lives, key):
    """Mean meta-loss of one env's lifetimes and its gradient, in sequential chunks."""
    keys = jax.random.split(key, pe)

    def chunk_grad(rp, lives_c, keys_c):
      def loss_fn(rp):
        losses, (new_lives, metrics) = jax.vmap(problem.meta_loss, in_axes=(None, 0, 0))(
            rp, lives_c, keys_c)
        return jnp.mean(losses), (new_lives, metrics)
      (l, (new_lives, metrics)), g = jax.value_and_grad(loss_fn, has_aux=True)(rp)
      return l, g, new_lives, metrics

    if n_chunks == 1:
      return chunk_grad(rule_params, lives, keys)
    # Chunk c holds agents c, c + n_chunks, ...: the within-chunk axis keeps the
    # population's device sharding and the scan runs over the unsharded one.
    split = lambda x: jnp.swapaxes(x.reshape((chunk, n_chunks) + x.shape[1:]), 0, 1)
    merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((pe,) + x.shape[2:])

    def body(acc, xs):
      lives_c, keys_c = xs
      l, g, new_lives, metrics = chunk_grad(rule_params, lives_c, keys_c)
      acc = jax.tree_util.tree_map(lambda a, b: a + b / n_chunks, acc, (l, g))
      return acc, (new_lives, metrics)

    zero = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, rule_params))
    (l, g), (new_lives, metrics) = jax.lax.scan(
        body, zero, (jax.tree_util.tree_map(split, lives), split(keys)))
    return l, g, jax.tree_util.tree_map(merge, new_lives), jax.tree_util.tree_map(merge, metrics)

  def init(seed: int) -> TrainState:
    key = jax.random.PRNGKey(seed)
    k_rule, k_pop = jax.random.split(key)
    rule_params = rule.init(k_rule)
    b = bandit.init(num_envs, num_arms)
    lives, arms_all = [], []
    for e in range(num_envs):
      k_arm, k_life = jax.random.split(jax.random.fold_in(k_pop, e))
      arms = bandit.sample(k_arm, b, e, pe, config.bandit_temperature, config.bandit_bonus)
      group = new_lives(e, k_life, arms)
      # Stagger: agent i starts as if i/P_e of the way through its lifetime,
      # so the population holds early, middle and late agents from the start.
      age = (np.arange(pe) * config.lifetime_updates // pe) // K * K
      lives.append(group._replace(age=jnp.asarray(age, jnp.int32)))
      arms_all.append(arms)
    zeros = tuple(jnp.zeros((pe,), jnp.float32) for _ in range(num_envs))
    falses = tuple(jnp.zeros((pe,), jnp.bool_) for _ in range(num_envs))
    scored = tuple(l.age == 0 for l in lives)  # the staggered first generation is not scored
    return TrainState(step=jnp.zeros((), jnp.int32), rule_params=rule_params,
                      meta_opt_state=meta_opt.init(rule_params), lives=tuple(lives),
                      arms=tuple(arms_all), ret_ema=zeros, ret_seen=falses, scored=scored,
                      bandit=b, key=key, skipped=jnp.zeros((), jnp.int32))

  def step(state: TrainState, _) -> tuple[TrainState, StepMetrics]:
    key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
    k_loss, k_life = jax.random.split(key)

    loss, grads, aux = 0.0, None, []
    for e, problem in enumerate(problems):
      g_loss, g_grads, lives, metrics = group_meta_grad(
          problem, state.rule_params, state.lives[e], jax.random.fold_in(k_loss, e))
      loss = loss + g_loss / num_envs
      g_grads = jax.tree_util.tree_map(lambda g: g / num_envs, g_grads)
      grads = g_grads if grads is None else jax.tree_util.tree_map(jnp.add, grads, g_grads)
      aux.append((lives, metrics))
    if config.fault_injection_step >= 0:
      poison = jnp.where(state.step >= config.fault_injection_step, jnp.nan, 1.0)
      grads = jax.tree_util.tree_map(lambda g: g * poison, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = meta_opt.update(grads, state.meta_opt_state, state.rule_params)
    rule_params = optax.apply_updates(state.rule_params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(rule_params)
    rule_params = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), rule_params,
                                         state.rule_params)
    opt_state = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), opt_state,
                                       state.meta_opt_state)

    b = state.bandit
    lives_out, arms_out, ema_out, seen_out, scored_out = [], [], [], [], []
    m_ret, m_eps, f_ret, f_norm, f_cnt, ent, pisq = [], [], [], [], [], [], []
    for e in range(num_envs):
      lives, metrics = aux[e]
      mean_ret = metrics.return_sum / jnp.maximum(metrics.episodes, 1.0)
      has = metrics.episodes > 0
      ema = jnp.where(has, jnp.where(state.ret_seen[e], 0.7 * state.ret_ema[e] + 0.3 * mean_ret,
                                     mean_ret), state.ret_ema[e])
      seen = state.ret_seen[e] | has
      ended = (lives.age >= config.lifetime_updates) | ~_agent_finite(lives)
      credit = ended & state.scored[e] & seen
      final_norm = normalise(e, ema)
      b = bandit.update(b, e, state.arms[e], final_norm, credit, config.bandit_window)
      k_arm, k_new = jax.random.split(jax.random.fold_in(k_life, e))
      arms_new = bandit.sample(k_arm, b, e, pe, config.bandit_temperature, config.bandit_bonus)
      fresh = new_lives(e, k_new, arms_new)
      lives_out.append(_tree_where(ended, fresh, lives))
      arms_out.append(jnp.where(ended, arms_new, state.arms[e]))
      ema_out.append(jnp.where(ended, 0.0, ema))
      seen_out.append(seen & ~ended)
      scored_out.append(state.scored[e] | ended)
      m_ret.append(metrics.return_sum.sum())
      m_eps.append(metrics.episodes.sum())
      f_ret.append(jnp.sum(jnp.where(credit, ema, 0.0)))
      f_norm.append(jnp.sum(jnp.where(credit, final_norm, 0.0)))
      f_cnt.append(credit.sum().astype(jnp.float32))
      ent.append(metrics.entropy.mean())
      pisq.append(metrics.pi_hat_sq.mean())

    new_state = TrainState(
        step=state.step + 1, rule_params=rule_params, meta_opt_state=opt_state,
        lives=tuple(lives_out), arms=tuple(arms_out), ret_ema=tuple(ema_out),
        ret_seen=tuple(seen_out), scored=tuple(scored_out), bandit=b, key=state.key,
        skipped=state.skipped + (~ok).astype(jnp.int32))
    metrics = StepMetrics(
        meta_loss=loss, grad_norm=grad_norm, skipped=~ok,
        episode_return_sum=jnp.stack(m_ret), episodes=jnp.stack(m_eps),
        finished_return_sum=jnp.stack(f_ret), finished_norm_sum=jnp.stack(f_norm),
        finished=jnp.stack(f_cnt),
        arm_probs=bandit.probabilities(b, config.bandit_temperature, config.bandit_bonus),
        entropy=jnp.stack(ent), pi_hat_sq=jnp.stack(pisq))
    return new_state, metrics

  def run_fn(state: TrainState, n: int):
    return jax.lax.scan(step, state, None, length=n)

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
  return MetaTrain(init=init_fn, run=run, shardings=shardings, problems=problems,
                   arm_table=arm_table, references=references)
