"""OpenES over whole lifetimes: small pure functions on a flat parameter vector.

One generation (``make_generation``):

1. ``sample_noise``: ``P/2`` Gaussian directions, each used twice with
   opposite signs (members ``2i`` and ``2i+1`` are an antithetic pair).
2. Members ``mean + sigma * eps_i`` are unravelled to the rule's parameter
   pytree and scored by ``fitness_fn(params, key)``, a ``jax.vmap`` over the
   member axis; with a ``Mesh`` that axis is sharded over its devices
   (``shard_members``), as the meta-gradient's population is.
3. ``shape_fitness``: centred ranks in ``[-0.5, 0.5]`` (or z-scores, or raw).
4. ``gradient_estimate``: ``g = sum_i f_i eps_i / (P sigma)``, an estimate of
   the gradient of ``E[f(mean + sigma eps)]`` (ascent direction).
5. Adam (optax) on the mean, minimising ``-f``.

All randomness of generation ``s`` comes from ``fold_in(state.key, s)``, so an
``ESState`` saved after any generation resumes bit for bit.

Defaults (``ESConfig``) follow the corrected public TA-LPG code (Jackson et
al., ICLR 2024; LPG_SPEC section 9): learning rate 1e-2, sigma 1e-1, OpenES
with antithetic sampling, centred-rank shaping and Adam.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lpg.types import PyTree

SHAPINGS = ("centered_rank", "z_score", "raw")
AXIS = "pop"  # the mesh axis name of meta_train.distributed


@dataclasses.dataclass(frozen=True)
class ESConfig:
  """OpenES settings.

  Attributes:
    population: members per generation, even (antithetic pairs) [chosen: 64,
      OPEN's OpenES population (LPG_SPEC section 9); TA-LPG's is not recorded].
    sigma: standard deviation of the perturbations [ported: 0.1, TA-LPG public
      code as corrected].
    learning_rate: Adam step on the mean [ported: 1e-2, TA-LPG corrected].
    shaping: ``centered_rank`` [ported: OpenES / evosax default], ``z_score``
      or ``raw`` (the unbiased estimate, for tests).
    weight_decay: decoupled L2 decay of the mean (AdamW) [chosen: 0, off].
    max_grad_norm: clip of the estimate's global norm before Adam; 0 disables
      [chosen: 0, off; centred ranks already bound the estimate].
    shared_eval_key: every member of a generation is scored on the same tasks
      and seeds (common random numbers: members differ only by their rule)
      [chosen: on; off gives each antithetic pair its own key].
  """
  population: int = 64
  sigma: float = 0.1
  learning_rate: float = 1e-2
  shaping: str = "centered_rank"
  weight_decay: float = 0.0
  max_grad_norm: float = 0.0
  shared_eval_key: bool = True

  def __post_init__(self):
    if int(self.population) < 2 or int(self.population) % 2:
      raise ValueError(f"ES population must be even and >= 2 (antithetic pairs), "
                       f"got {self.population}")
    if not self.sigma > 0 or not self.learning_rate > 0:
      raise ValueError("ES sigma and learning_rate must be > 0")
    if self.shaping not in SHAPINGS:
      raise ValueError(f"ES shaping must be one of {SHAPINGS}, got {self.shaping!r}")
    if self.weight_decay < 0 or self.max_grad_norm < 0:
      raise ValueError("ES weight_decay and max_grad_norm must be >= 0")


class ESState(NamedTuple):
  """Everything an ES run carries between generations (all arrays).

  Attributes:
    mean: ``[D]`` float32 flat mean parameters.
    opt_state: Adam's state on ``mean``.
    key: ``[2]`` uint32 base key of the run.
    step: ``[]`` int32 generations done.
  """
  mean: jax.Array
  opt_state: PyTree
  key: jax.Array
  step: jax.Array


class GenMetrics(NamedTuple):
  """One generation's scalars (``fitness`` ``[P]`` per member)."""
  fitness: jax.Array
  fitness_mean: jax.Array
  fitness_max: jax.Array
  grad_norm: jax.Array
  mean_norm: jax.Array


def make_optimizer(config: ESConfig) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
  if config.weight_decay > 0:
    parts.append(optax.adamw(config.learning_rate, weight_decay=config.weight_decay))
  else:
    parts.append(optax.adam(config.learning_rate))
  return optax.chain(*parts)


def init(params: PyTree, config: ESConfig, key: jax.Array) -> tuple[ESState, Callable]:
  """ES state around ``params`` and ``unravel: [D] -> params pytree``."""
  flat, unravel = ravel_pytree(params)
  flat = flat.astype(jnp.float32)
  return (ESState(mean=flat, opt_state=make_optimizer(config).init(flat), key=key,
                  step=jnp.zeros((), jnp.int32)), unravel)


def sample_noise(key: jax.Array, population: int, dim: int) -> jax.Array:
  """``[P, D]`` antithetic standard normal noise: rows ``2i`` and ``2i+1`` are ``+e, -e``."""
  half = jax.random.normal(key, (population // 2, dim), jnp.float32)
  return jnp.stack([half, -half], axis=1).reshape(population, dim)


def centered_ranks(fitness: jax.Array) -> jax.Array:
  """``[P]`` ranks of ``fitness`` mapped linearly onto ``[-0.5, 0.5]`` (lowest -0.5)."""
  ranks = jnp.argsort(jnp.argsort(fitness)).astype(jnp.float32)
  return ranks / (fitness.shape[0] - 1) - 0.5


def shape_fitness(fitness: jax.Array, shaping: str) -> jax.Array:
  """``[P]`` shaped fitness (higher is better in and out)."""
  if shaping == "centered_rank":
    return centered_ranks(fitness)
  if shaping == "z_score":
    return (fitness - fitness.mean()) / (fitness.std() + 1e-8)
  return fitness


def gradient_estimate(eps: jax.Array, shaped: jax.Array, sigma: float) -> jax.Array:
  """``[D]`` ``sum_i shaped_i eps_i / (P sigma)``: the ascent direction of the mean.

  With ``shaped`` the raw fitness this is an unbiased estimate of the gradient
  of ``E_eps[f(mean + sigma eps)]`` (exactly ``grad f(mean)`` for a quadratic).
  """
  return shaped @ eps / (eps.shape[0] * sigma)


def member_keys(key: jax.Array, config: ESConfig) -> jax.Array:
  """``[P, 2]`` evaluation keys: one shared key, or one per antithetic pair."""
  if config.shared_eval_key:
    return jnp.broadcast_to(key, (config.population,) + key.shape)
  return jnp.repeat(jax.random.split(key, config.population // 2), 2, axis=0)


def shard_members(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """Constrains the leading (member) axis of every leaf to the mesh axis ``pop``.

  Inside a jitted function; a no-op without a mesh.
  """
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, PartitionSpec(AXIS))
  return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)


def tell(state: ESState, eps: jax.Array, fitness: jax.Array, config: ESConfig
         ) -> tuple[ESState, jax.Array]:
  """Moves the mean along the estimate from members' ``fitness`` ``[P]``.

  Returns the next state (``step + 1``) and the estimate's norm.
  """
  grad = gradient_estimate(eps, shape_fitness(fitness, config.shaping), config.sigma)
  updates, opt_state = make_optimizer(config).update(-grad, state.opt_state, state.mean)
  mean = optax.apply_updates(state.mean, updates)
  return state._replace(mean=mean, opt_state=opt_state, step=state.step + 1), jnp.linalg.norm(grad)


def make_generation(fitness_fn: Callable, unravel: Callable, config: ESConfig,
                    mesh: Mesh | None = None, context_fn: Callable | None = None) -> Callable:
  """Builds ``generation(state) -> (state, GenMetrics)`` (pure; jit or scan it).

  Args:
    fitness_fn: ``(params_pytree, key) -> []`` fitness of one member (higher
      is better), e.g. ``lpg.lifetime.mean_fitness`` of a few lifetimes; it is
      ``jax.vmap``-ed over the members.  With ``context_fn`` it is called as
      ``fitness_fn(params, key, context)``.
    unravel: from ``init``.
    config: ``ESConfig``.
    mesh: shard the member axis over this mesh's ``pop`` axis (``None``: no
      constraint).  The population must split evenly over its devices.
    context_fn: ``key -> context`` drawn once per generation and shared, not
      vmapped, by all members, e.g. the generation's lifetime length N
      (``lpg.lifetime.sample_planned``): shared, it keeps the skipped updates
      of a short lifetime a real branch.
  """
  if mesh is not None and config.population % mesh.size:
    raise ValueError(f"ES population ({config.population}) must be a multiple of the "
                     f"{mesh.size} devices")

  def generation(state: ESState) -> tuple[ESState, GenMetrics]:
    k_noise, k_eval, k_context = jax.random.split(jax.random.fold_in(state.key, state.step), 3)
    eps = sample_noise(k_noise, config.population, state.mean.shape[0])
    members = shard_members((state.mean + config.sigma * eps, member_keys(k_eval, config)), mesh)
    if context_fn is None:
      fit = jax.vmap(lambda flat, k: fitness_fn(unravel(flat), k))(*members)
    else:
      context = context_fn(k_context)
      fit = jax.vmap(lambda flat, k: fitness_fn(unravel(flat), k, context))(*members)
    new_state, grad_norm = tell(state, eps, fit, config)
    return new_state, GenMetrics(fitness=fit, fitness_mean=fit.mean(), fitness_max=fit.max(),
                                 grad_norm=grad_norm, mean_norm=jnp.linalg.norm(new_state.mean))

  return generation


def run(generation: Callable, state: ESState, n: int) -> tuple[ESState, GenMetrics]:
  """``n`` generations in one ``lax.scan`` (metrics ``[n, ...]``); jit with ``n`` static."""
  return jax.lax.scan(lambda s, _: generation(s), state, None, length=n)
