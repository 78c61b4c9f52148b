"""Return and advantage estimators on one trajectory (rlax style; vmap to batch).

Argument names carry the time index: ``r_t``, ``discount_t`` (``gamma`` times the
bootstrap mask of step t) and ``v_t`` (values of ``s_0..s_T``, length T+1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def lambda_returns(r_t: jax.Array, discount_t: jax.Array, v_t: jax.Array,
                   lambda_: jax.Array | float = 1.0) -> jax.Array:
  """TD(lambda) returns ``G_t = r_t + discount_t((1-lambda) v_{t+1} + lambda G_{t+1})``.

  Args:
    r_t: ``[T]`` rewards.
    discount_t: ``[T]`` discounts (0 where not bootstrapping).
    v_t: ``[T+1]`` values of ``s_0..s_T``; ``v_t[T]`` bootstraps the tail.
    lambda_: scalar mixing parameter.
  Returns:
    ``[T]`` returns (Sutton and Barto 2018, section 12.1).
  """
  lambda_ = jnp.asarray(lambda_, r_t.dtype)

  def body(g_next, xs):
    r, d, v_next = xs
    g = r + d * ((1.0 - lambda_) * v_next + lambda_ * g_next)
    return g, g

  _, g = jax.lax.scan(body, v_t[-1], (r_t, discount_t, v_t[1:]), reverse=True)
  return g


def gae(r_t: jax.Array, discount_t: jax.Array, v_t: jax.Array, lambda_: float) -> jax.Array:
  """Generalised advantage estimates ``[T]`` (Schulman et al. 2016)."""
  return lambda_returns(r_t, discount_t, v_t, lambda_) - v_t[:-1]


def discounted_returns(r_t: jax.Array, discount_t: jax.Array, v_tail: jax.Array | float = 0.0) -> jax.Array:
  """Monte-Carlo returns ``[T]`` bootstrapped from ``v_tail`` after the last step."""
  v = jnp.zeros(r_t.shape[0] + 1, r_t.dtype).at[-1].set(v_tail)
  return lambda_returns(r_t, discount_t, v, 1.0)


batched_gae = jax.vmap(gae, in_axes=(1, 1, 1, None), out_axes=1)
batched_lambda_returns = jax.vmap(lambda_returns, in_axes=(1, 1, 1, None), out_axes=1)
