"""The inner update against an independently written REINFORCE update."""
import jax
import jax.numpy as jnp
import numpy as np

import envs
from lpg.networks import AgentConfig, make_agent_network
from lpg.rollout import reset_envs, unroll
from lpg.returns import discounted_returns
from lpg.rule import LPGConfig, LPGRule, make_hypers
from lpg.types import RuleOutputs
from lpg.update import OptimizerConfig, inner_update, make_optimizer


class ReturnTargetRule(LPGRule):
  """LPG's agent update with a hand-set target: pi_hat = G_t, y_hat uniform."""

  def targets(self, params, rollout, agent_out, hypers):
    disc = hypers.gamma * rollout.bootstrap_mask
    g = jax.vmap(discounted_returns, in_axes=(1, 1), out_axes=1)(rollout.rewards, disc)
    m = self.config.y_dim
    return RuleOutputs(pi_hat=g, y_hat=jnp.full(g.shape + (m,), 1.0 / m))


def test_hand_set_rule_reproduces_reinforce():
  env = envs.make("chain/short")
  rule = ReturnTargetRule(LPGConfig(hidden=4, y_dim=3))
  net = make_agent_network(AgentConfig("tabular"), env.obs_spec, env.num_actions, rule.head_sizes())
  params = net.init(jax.random.PRNGKey(0))
  # Start from a non-uniform policy so the check is not trivial.
  params["~"]["pi"] = jax.random.normal(jax.random.PRNGKey(9), params["~"]["pi"].shape)
  env_params = env.default_params()
  carry = reset_envs(env, env_params, jax.random.PRNGKey(1), 8)
  rollout, _, _ = unroll(env, env_params, lambda o: net.apply(params, o).logits, carry,
                         jax.random.PRNGKey(2), 40)
  lr, gamma = 0.7, 0.9
  opt = make_optimizer(OptimizerConfig("sgd", max_grad_norm=0.0))
  res = inner_update(rule, {}, net, opt, params, opt.init(params), rollout,
                     make_hypers(lr, alpha_y=0.0, gamma=gamma))

  # Independent REINFORCE: theta[s] += lr/N * sum_t G_t (onehot(a_t) - pi(.|s_t)).
  obs = np.asarray(rollout.obs[:-1]).reshape(-1)
  acts = np.asarray(rollout.actions).reshape(-1)
  rew = np.asarray(rollout.rewards)
  done = np.asarray(rollout.done)
  T, B = rew.shape
  G = np.zeros((T, B))
  running = np.zeros(B)
  for t in reversed(range(T)):
    running = rew[t] + gamma * (1.0 - done[t]) * running
    G[t] = running
  G = G.reshape(-1)
  theta = np.asarray(params["~"]["pi"], np.float64).copy()
  expected = theta.copy()
  for s, a, g in zip(obs, acts, G):
    p = np.exp(theta[s] - theta[s].max())
    p /= p.sum()
    expected[s] += lr / (T * B) * g * (np.eye(2)[a] - p)
  np.testing.assert_allclose(res.params["~"]["pi"], expected, rtol=1e-5, atol=1e-6)
  # alpha_y = 0: the y table is untouched.
  np.testing.assert_array_equal(res.params["~"]["y"], params["~"]["y"])
