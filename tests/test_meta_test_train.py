"""meta_test.train and meta_test.baselines: compiled runs, chunking, A2C targets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from lpg.networks import AgentConfig
from lpg.rule import LPGConfig, LPGRule, make_hypers
from lpg.types import AgentOutputs, Rollout
from lpg.update import OptimizerConfig
from meta_test.baselines import A2CConfig, A2CRule, RandomRule
from meta_test.train import RunConfig, make_train, run_seeds

B, T, U = 8, 10, 7


@pytest.fixture(scope="module")
def chain_fns():
  rule = LPGRule(LPGConfig(hidden=16, y_dim=8))
  params = rule.init(jax.random.PRNGKey(0))
  config = RunConfig(AgentConfig("tabular"), OptimizerConfig("sgd"), 40.0, num_envs=B,
                     rollout_len=T, num_updates=U, chunk=3)
  return make_train(envs.make("chain/short"), config, rule, params)


def test_chunked_run_equals_whole_run(chain_fns):
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  _, whole = jax.jit(jax.vmap(chain_fns.train))(keys)
  assert whole.episodes.shape == (2, U)
  calls = []
  res = run_seeds(chain_fns, keys, progress=calls.append)
  assert calls == [3, 3, 1]                      # 7 updates in chunks of 3, the last one cond-skipped
  assert res.metrics.episodes.shape == (2, U)
  np.testing.assert_allclose(res.metrics.return_sum, np.asarray(whole.return_sum), rtol=1e-5)
  np.testing.assert_allclose(res.metrics.episodes, np.asarray(whole.episodes))
  assert res.env_steps == 2 * U * B * T and res.steps_per_s > 0


def test_make_train_vmaps_over_seeds():
  config = RunConfig(AgentConfig("tabular"), OptimizerConfig("sgd"), 40.0, num_envs=4,
                     rollout_len=5, num_updates=3)
  fns = make_train(envs.make("chain/short"), config, RandomRule(), {})
  state, m = jax.jit(jax.vmap(fns.train))(jax.random.split(jax.random.PRNGKey(0), 3))
  assert m.return_sum.shape == (3, 3)
  # The random rule never moves the agent off its uniform zero init.
  assert float(jnp.abs(state.agent_params["~"]["pi"]).max()) == 0.0
  assert m.meta_params == {} and float(jnp.abs(m.meta_loss).max()) == 0.0


@pytest.mark.parametrize("bad", [dict(num_envs=0), dict(rollout_len=0), dict(num_updates=0),
                                 dict(learning_rate=float("inf"))])
def test_run_config_refuses_bad_values(bad):
  kw = dict(agent=AgentConfig("tabular"), optimizer=OptimizerConfig("sgd"), learning_rate=1.0)
  with pytest.raises(ValueError):
    RunConfig(**{**kw, **bad})


def _rollout(rewards, terminated, truncated=None):
  rewards = jnp.asarray(rewards, jnp.float32)[:, None]
  t = rewards.shape[0]
  terminated = jnp.asarray(terminated, bool)[:, None]
  truncated = jnp.zeros_like(terminated) if truncated is None else jnp.asarray(truncated, bool)[:, None]
  return Rollout(obs=jnp.zeros((t + 1, 1), jnp.int32), actions=jnp.zeros((t, 1), jnp.int32),
                 rewards=rewards, terminated=terminated, truncated=truncated)


def test_a2c_targets_hand_computed():
  # n-step (lambda = 1) returns, gamma 0.5: v = [1, 2, 3, 4]; episode ends at t=1.
  rule = A2CRule(A2CConfig(gae_lambda=1.0))
  ro = _rollout([1.0, 2.0, 4.0], [False, True, False])
  v = jnp.asarray([1.0, 2.0, 3.0, 4.0])[:, None]
  out = AgentOutputs(logits=jnp.zeros((4, 1, 2)), heads={"v": v})
  tg = rule.targets({}, ro, out, make_hypers(1.0, gamma=0.5))
  g2 = 4.0 + 0.5 * 4.0           # bootstraps from v[3]
  g1 = 2.0                       # terminal
  g0 = 1.0 + 0.5 * g1
  np.testing.assert_allclose(tg.extras["returns"][:, 0], [g0, g1, g2])
  np.testing.assert_allclose(tg.pi_hat[:, 0], [g0 - 1, g1 - 2, g2 - 3])


def test_a2c_truncation_does_not_bootstrap():
  rule = A2CRule(A2CConfig(gae_lambda=1.0))
  ro = _rollout([1.0, 1.0], [False, False], truncated=[True, False])
  out = AgentOutputs(logits=jnp.zeros((3, 1, 2)), heads={"v": jnp.full((3, 1), 10.0)})
  tg = rule.targets({}, ro, out, make_hypers(1.0, gamma=1.0))
  np.testing.assert_allclose(tg.extras["returns"][:, 0], [1.0, 11.0])


def test_a2c_loss_gradient_pushes_advantaged_action():
  rule = A2CRule(A2CConfig(entropy_coef=0.0))
  ro = _rollout([1.0], [True])
  hy = make_hypers(1.0)

  def loss(logits):
    out = AgentOutputs(logits=logits, heads={"v": jnp.zeros((2, 1))})
    return rule.agent_loss(out, rule.targets({}, ro, out, hy), ro, hy)[0]
  g = jax.grad(loss)(jnp.zeros((2, 1, 2)))
  assert g[0, 0, 0] < 0 < g[0, 0, 1]             # descending raises the taken action's logit
  assert float(jnp.abs(g[1]).max()) == 0.0       # the bootstrap step gets no policy gradient
