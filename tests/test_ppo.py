"""PPO (meta_test.ppo): the loss against hand computations, the pieces of a run,
and that it learns CartPole."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from lpg.networks import AgentConfig
from lpg.rule import make_hypers
from lpg.update import OptimizerConfig
from meta_test import ppo
from meta_test.results import final_returns
from meta_test.train import run_seeds

LN2 = math.log(2.0)

# Three samples, two actions, uniform current policy (pi(a|s) = 0.5, entropy ln 2).
# Behaviour probabilities 0.25, 0.5, 1.0 give ratios 2, 1, 0.5.
HAND = ppo.Batch(obs=jnp.zeros((3, 1)), actions=jnp.array([0, 1, 0]),
                 log_probs=jnp.log(jnp.array([0.25, 0.5, 1.0])),
                 values=jnp.array([0.5, 0.0, 0.0]),          # behaviour values
                 advantages=jnp.array([1.0, -1.0, -2.0]),
                 returns=jnp.array([2.0, 1.0, 0.0]))
LOGITS = jnp.zeros((3, 2))
VALUES = jnp.array([1.0, 0.0, 2.0])                         # current values
# Surrogates min(r A, clip(r, 0.8, 1.2) A):
#   s0: r = 2, A = 1:    min(2, 1.2) = 1.2     (clipped above: active)
#   s1: r = 1, A = -1:   min(-1, -1) = -1      (inactive)
#   s2: r = 0.5, A = -2: min(-1, -1.6) = -1.6  (clipped below: active)
PG_LOSS = -(1.2 - 1.0 - 1.6) / 3
# Squared errors (v - G)^2: 1, 1, 4; clipped values v_old + clip(v - v_old, +-0.2):
# 0.7, 0.0, 0.2 -> errors 1.69, 1, 0.04; elementwise max: 1.69, 1, 4.
V_LOSS = 0.5 * (1 + 1 + 4) / 3
V_LOSS_CLIPPED = 0.5 * (1.69 + 1 + 4) / 3
RAW = ppo.PPOConfig(normalize_advantages=False, clip_value=False)


def test_loss_matches_hand_computation_without_value_clipping():
  loss, aux = ppo.ppo_loss(RAW, LOGITS, VALUES, HAND)
  np.testing.assert_allclose(aux["pg_loss"], PG_LOSS, rtol=1e-6)
  np.testing.assert_allclose(aux["value_loss"], V_LOSS, rtol=1e-6)
  np.testing.assert_allclose(aux["entropy"], LN2, rtol=1e-6)
  np.testing.assert_allclose(loss, PG_LOSS + 0.5 * V_LOSS - 0.01 * LN2, rtol=1e-6)
  np.testing.assert_allclose(aux["clip_frac"], 2 / 3, rtol=1e-6)
  # approx KL: mean(r - 1 - log r) over r = 2, 1, 0.5.
  np.testing.assert_allclose(aux["approx_kl"],
                             ((1 - math.log(2)) + 0 + (-0.5 + math.log(2))) / 3, rtol=1e-6)


def test_loss_matches_hand_computation_with_value_clipping():
  cfg = dataclasses.replace(RAW, clip_value=True, value_coef=2.0, entropy_coef=0.1)
  loss, aux = ppo.ppo_loss(cfg, LOGITS, VALUES, HAND)
  np.testing.assert_allclose(aux["value_loss"], V_LOSS_CLIPPED, rtol=1e-6)
  np.testing.assert_allclose(loss, PG_LOSS + 2.0 * V_LOSS_CLIPPED - 0.1 * LN2, rtol=1e-6)


def test_clipped_samples_get_no_policy_gradient():
  """Where the clip is active (samples 0 and 2) d pg_loss / d logits is zero;
  where it is not (sample 1) it is the plain policy gradient -A/N dlog pi(a)."""
  def pg(logits):
    return ppo.ppo_loss(RAW, logits, VALUES, HAND)[1]["pg_loss"]
  g = jax.grad(pg)(LOGITS)
  np.testing.assert_allclose(g[0], 0.0, atol=1e-7)
  np.testing.assert_allclose(g[2], 0.0, atol=1e-7)
  # d log pi(1) / d logits = onehot(1) - pi = [-0.5, 0.5]; r = 1, A = -1, N = 3.
  np.testing.assert_allclose(g[1], -(-1.0) / 3 * np.array([-0.5, 0.5]), rtol=1e-6)


def test_advantage_normalisation_is_per_minibatch():
  cfg = dataclasses.replace(RAW, normalize_advantages=True)
  adv = np.array([1.0, -1.0, -2.0])
  a = (adv - adv.mean()) / (adv.std() + 1e-8)     # population std, as purejaxrl
  r = np.array([2.0, 1.0, 0.5])
  expected = -np.mean(np.minimum(r * a, np.clip(r, 0.8, 1.2) * a))
  _, aux = ppo.ppo_loss(cfg, LOGITS, VALUES, HAND)
  np.testing.assert_allclose(aux["pg_loss"], expected, rtol=1e-6)


def test_orthogonal_init_gains():
  env = envs.make("CartPole")
  net = ppo.make_network(ppo.PPOConfig(), env, AgentConfig("mlp", (64, 64)))
  params = net.init(jax.random.PRNGKey(0))
  w = params["torso/~/linear_1"]["w"]
  np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)
  w_pi = params["pi"]["w"]                            # [64, 2]: orthonormal columns x 0.01
  np.testing.assert_allclose(w_pi.T @ w_pi, 1e-4 * np.eye(2), atol=1e-8)
  assert all(float(jnp.abs(m["b"]).max()) == 0.0 for m in params.values())


def test_learning_rate_anneals_linearly_per_update():
  cfg = ppo.PPOConfig(learning_rate=1.0, max_grad_norm=0.0, update_epochs=2, num_minibatches=2)
  opt = ppo.make_optimizer(cfg, num_updates=4)
  # Adam's first step moves every parameter by lr (sign of the gradient): read lr off it.
  params = jnp.zeros(())
  state = opt.init(params)
  steps = []
  for _ in range(8):                                  # 4 updates x (2 epochs x 2 minibatches)
    upd, state = opt.update(jnp.ones(()), state, params)
    steps.append(-float(upd))
  np.testing.assert_allclose(steps, [1, 1, 1, 1, 0.75, 0.75, 0.75, 0.75], rtol=1e-4)


def test_config_rejects_indivisible_minibatches():
  with pytest.raises(ValueError, match="num_minibatches"):
    ppo.PPOConfig(num_envs=3, rollout_len=5, num_minibatches=4)


def test_chunked_run_equals_whole_run():
  """``make_ppo_train_fns`` (the ``make_train_fns`` argument list) chunked as
  ``run_seeds`` runs it (the last chunk partly skipped) reproduces
  ``make_train``'s whole run; metrics have ``[S, U]``."""
  env = envs.make("CartPole")
  cfg = ppo.PPOConfig(num_envs=2, rollout_len=8, num_minibatches=2, update_epochs=2)
  agent = AgentConfig("mlp", (8,))
  fns = ppo.make_ppo_train_fns(env, ppo.PPORule(cfg), {}, agent,
                               OptimizerConfig("adam", max_grad_norm=cfg.max_grad_norm),
                               make_hypers(cfg.learning_rate, gamma=cfg.gamma),
                               cfg.num_envs, cfg.rollout_len, num_updates=5, chunk=2)
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  res = run_seeds(fns, keys)
  _, whole = jax.jit(jax.vmap(ppo.make_train(cfg, env, agent, num_updates=5)))(keys)
  assert res.metrics.loss.shape == (2, 5)
  for a, b in zip(res.metrics, whole):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ppo_learns_cartpole():
  """100k steps, 2 seeds (vector defaults: 4 envs x 128 steps, lr 1e-3): mean
  final return >= 150 (uniform random policy: about 22; measured about 250)."""
  env = envs.make("CartPole")
  cfg = ppo.PPO_DEFAULTS["vector"]
  fns = ppo.make_train_fns(cfg, env, AgentConfig("mlp", (64, 64)), ppo.num_updates_for(cfg, 1e5))
  res = run_seeds(fns, jax.random.split(jax.random.PRNGKey(0), 2))
  final, _ = final_returns(res)
  assert np.all(final >= 150), final
