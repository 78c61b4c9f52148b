"""Chains, gymnax wrappers, registry, suites, dm_env adapter and reference returns."""
import functools
import os
import subprocess
import sys

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from dm_env import test_utils

import envs
from envs import returns
from envs.chain import ChainState


# -------------------------------------------------------------------- chains
@pytest.fixture(scope="module")
def chain_rollout():
  """Jitted: run one env for ``steps`` steps with given actions."""
  cache = {}

  def get(name):
    if name not in cache:
      env = envs.make(name)

      @jax.jit
      def run(key, actions, params):
        _, state = env.reset(key, params)

        def body(state, xs):
          k, a = xs
          out = env.step(k, state, a, params)
          return out.state, (out.obs, out.reward, out.done)

        keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
        return state, jax.lax.scan(body, state, (keys, actions))[1]

      cache[name] = (env, run)
    return cache[name]

  return get


def test_chain_first_action_decides(chain_rollout):
  env, run = chain_rollout("chain/short")
  params = env.sample_params(jax.random.PRNGKey(0))
  n = int(params.length)
  assert 5 <= n <= 30
  rng = np.random.default_rng(0)
  for seed in range(6):
    key = jax.random.PRNGKey(seed)
    state0, _ = run(key, jnp.zeros(n, jnp.int32), params)
    correct = int(state0.correct)
    first = seed % 2
    actions = jnp.asarray(np.concatenate([[first], rng.integers(0, 2, n - 1)]), jnp.int32)
    _, (obs, rew, done) = run(key, actions, params)
    rew, done = np.asarray(rew), np.asarray(done)
    assert np.all(rew[:-1] == 0) and not done[:-1].any() and done[-1]
    assert rew[-1] == (1.0 if first == correct else -1.0)


def test_noisy_chain_intermediate_rewards(chain_rollout):
  env, run = chain_rollout("chain/long_noisy")
  params = env.sample_params(jax.random.PRNGKey(1))
  n = int(params.length)
  _, (_, rew, done) = run(jax.random.PRNGKey(3), jnp.zeros(n, jnp.int32), params)
  mid = np.asarray(rew)[:-1]
  assert set(np.unique(mid).tolist()) <= {-1.0, 1.0} and len(np.unique(mid)) == 2
  assert np.asarray(done)[-1]


def test_state_distraction_bits(chain_rollout):
  env, run = chain_rollout("chain/state_distraction")
  assert env.obs_spec.shape == (22,) and env.obs_spec.kind == "vector"
  params = env.default_params()
  n = int(params.length)
  _, (obs, _, _) = run(jax.random.PRNGKey(0), jnp.ones(n, jnp.int32), params)
  obs = np.asarray(obs)[:-1]  # the last obs belongs to a new episode
  assert obs.shape[1] == 22
  assert np.all(obs[:, 0] == 0)            # not the first state any more
  assert len(np.unique(obs[:, 1])) == 1    # "first action correct" stays fixed
  noise = obs[:, 2:]
  assert set(np.unique(noise).tolist()) == {0.0, 1.0}
  assert 0.3 < noise.mean() < 0.7


# -------------------------------------------------------------------- gymnax
@pytest.mark.parametrize("name", ["Breakout", "Freeway", "CartPole"])
def test_gymnax_wrapper_matches_raw_and_scans(name):
  env = envs.make(name)
  params = env.default_params()
  n, steps = 8, 64

  def rollout(step_fn, key):
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, n), params)

    def body(state, k):
      ka, ks = jax.random.split(k)
      a = jax.random.randint(ka, (n,), 0, env.num_actions)
      obs, state, r, term, trunc = step_fn(jax.random.split(ks, n), state, a)
      return state, (obs, r, term, trunc)

    return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

  ours = jax.jit(lambda k: rollout(
      lambda ks, s, a: tuple(jax.vmap(env.step, in_axes=(0, 0, 0, None))(ks, s, a, params)), k))
  raw = jax.jit(lambda k: rollout(
      lambda ks, s, a: jax.vmap(env.gymnax_env.step, in_axes=(0, 0, 0, None))(ks, s, a, params)[:5],
      k))
  for i in range(3):  # repeated compiled vmapped scans (the Freeway deadlock check)
    a = jax.block_until_ready(ours(jax.random.PRNGKey(i)))
  if name == "Freeway":  # compile-heavy: only the repeated-scan deadlock check
    return
  b = jax.block_until_ready(raw(jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(a[0], b[0])  # obs
  np.testing.assert_array_equal(a[1], b[1])  # reward
  np.testing.assert_array_equal(a[2], b[2])  # terminated
  assert a[0].shape == (steps, n) + env.obs_spec.shape


def test_gymnax_specs():
  assert envs.SUITES["minatar"] == ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
  assert envs.SUITES["classic"] == ("CartPole", "Acrobot", "MountainCar")
  b = envs.make("Breakout")
  assert b.obs_spec.kind == "image" and b.obs_spec.shape == (10, 10, 4)
  assert b.num_actions == 3 and b.max_episode_steps == 1000
  c = envs.make("CartPole")
  assert c.obs_spec.kind == "vector" and c.obs_spec.shape == (4,) and c.num_actions == 2


def test_gymnax_truncation_flag_excludes_termination():
  env = envs.make("CartPole")
  params = env.default_params()
  _, state = env.reset(jax.random.PRNGKey(0), params)
  state = state.replace(time=params.max_steps_in_episode - 1)
  out = env.step(jax.random.PRNGKey(1), state, 0, params)
  assert bool(out.done) and (bool(out.terminated) != bool(out.truncated))


# ------------------------------------------------------------ registry/suites
def test_registry_and_suites():
  names = envs.list_envs()
  assert len(envs.SUITES["all"]) == 15
  for suite in ("tabular", "random", "chain", "all", "minatar", "classic"):
    assert set(envs.suite(suite)) <= set(names)
  assert len(envs.suite("tabular")) == 5 and len(envs.suite("random")) == 5
  with pytest.raises(ValueError, match="suite"):
    envs.suite("atari")


def test_unknown_name_suggests_close_matches():
  with pytest.raises(ValueError, match="tabular/dense"):
    envs.make("tabular/dens")
  with pytest.raises(ValueError, match="Breakout"):
    envs.make("breakout")
  with pytest.raises(ValueError):
    envs.make("tabular/dense", num_actions=7)


# The training envs no other test steps (the others are stepped elsewhere).
@pytest.mark.parametrize("name", ["tabular/long_horizon", "tabular/long_dense", "random/dense",
                                  "random/long_horizon", "chain/long", "chain/short_noisy"])
def test_training_env_runs_and_autoresets(name):
  env = envs.make(name)

  @jax.jit
  def reset_then_time_out(key):
    params = env.sample_params(key)
    obs, state = env.reset(jax.random.fold_in(key, 1), params)
    state = state._replace(time=jnp.int32(env.max_episode_steps - 1))
    return obs, env.step(jax.random.fold_in(key, 2), state, 0, params)

  obs, out = reset_then_time_out(jax.random.PRNGKey(0))
  spec = env.obs_spec
  assert obs.shape == spec.shape and obs.dtype == spec.dtype
  assert out.obs.shape == spec.shape and out.obs.dtype == spec.dtype
  assert bool(out.done) and int(out.state.time) == 0


# ---------------------------------------------------------------------- dm_env
def _episode_actions(length):
  def gen(self):
    spec = self.environment.action_spec()
    for i in range(length):
      yield np.int32(i % spec.num_values)
  return gen


@functools.lru_cache(maxsize=None)
def _dm_base_env(name):
  """One env object per name, so the adapters of all mixin tests share compiled functions."""
  return envs.make(name)


DM_SAMPLE = {"chain/short": 80, "tabular/sparse": 120, "random/small_sparse": 120,
             "Breakout": 60, "CartPole": 60}

for _name, _length in DM_SAMPLE.items():
  _cls = type(f"DmEnvConformance_{_name.replace('/', '_')}",
              (test_utils.EnvironmentTestMixin, absltest.TestCase),
              {"make_object_under_test": lambda self, _n=_name: envs.DmEnvAdapter(_dm_base_env(_n), seed=0),
               "make_action_sequence": _episode_actions(_length)})
  globals()[_cls.__name__] = _cls


def test_dm_env_episode_ends_with_last():
  env = envs.make_dm_env("tabular/sparse", seed=3)
  assert isinstance(env.observation_spec(), dm_env.specs.DiscreteArray)
  ts = env.reset()
  assert ts.first()
  steps = 0
  while not ts.last():
    ts = env.step(np.int32(steps % 9))
    steps += 1
  assert steps <= 50 and env.step(0).first()


# ---------------------------------------------------------- reference returns
def test_reference_table_and_normalised_score():
  table = returns.load_table()
  for name in envs.SUITES["all"] + envs.SUITES["minatar"] + envs.SUITES["classic"]:
    ref = returns.reference_returns(name)
    assert ref["random"] is not None
    if name.startswith("tabular/"):
      assert ref["optimal"] > ref["random"]
    if name.startswith("chain/"):
      assert (ref["optimal"], ref["random"]) == (1.0, 0.0)
  assert returns.normalised_score("chain/short", 1.0) == pytest.approx(1.0)
  ref = returns.reference_returns("tabular/dense")
  assert returns.normalised_score("tabular/dense", ref["random"]) == pytest.approx(0.0)
  assert returns.normalised_score("Breakout", 3.0) is None
  assert "_meta" in table
  with pytest.raises(ValueError):
    returns.reference_returns("nope")


def test_optimal_return_by_name():
  env = envs.make("tabular/sparse")
  params = env.sample_params(jax.random.PRNGKey(0))
  assert returns.optimal_return("tabular/sparse", params) == pytest.approx(1.0)
  assert returns.optimal_return("chain/long") == 1.0
  assert returns.optimal_return("Breakout") is None


def test_normalised_score_is_vectorised_and_none_where_unknown():
  ref = returns.reference_pair("tabular/dense")
  opt, rnd = ref
  got = returns.normalised_score("tabular/dense", [rnd, opt, (rnd + opt) / 2])
  np.testing.assert_allclose(got, [0.0, 1.0, 0.5])
  assert float(jax.jit(lambda v: returns.normalise(v, ref))(jnp.float32(opt))) == pytest.approx(1.0)
  for name in ("Breakout", "random/dense", "no-such-env"):
    assert returns.reference_pair(name) is None and returns.normalised_score(name, 1.0) is None


def test_registry_is_a_read_only_table_and_suites_suggest():
  assert set(envs.REGISTRY) == set(envs.list_envs())
  with pytest.raises(TypeError):
    envs.REGISTRY["mine"] = envs.REGISTRY["chain/short"]  # type: ignore[index]
  assert envs.make("tabular/dense", num_actions=5).name == "tabular/dense"
  with pytest.raises(ValueError, match="'tabular'"):
    envs.suite("tabulr")


def test_xla_guard_is_applied_once_and_keeps_user_flags(monkeypatch):
  from envs import xla_guard
  assert xla_guard.FLAG in os.environ["XLA_FLAGS"]  # applied by importing envs
  assert xla_guard.apply() is False  # idempotent
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  jnp.ones(1).block_until_ready()  # the backend is up: too late here, and it says so.
  with pytest.warns(RuntimeWarning, match="deadlock guard"):
    assert xla_guard.apply() is True
  assert os.environ["XLA_FLAGS"] == f"--xla_foo=1 {xla_guard.FLAG}=false"
  monkeypatch.setenv("XLA_FLAGS", f"{xla_guard.FLAG}=true")
  assert xla_guard.apply() is False and os.environ["XLA_FLAGS"] == f"{xla_guard.FLAG}=true"


def test_importing_lpg_applies_the_xla_guard_in_a_fresh_process():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  code = "import os, lpg; print(os.environ['XLA_FLAGS'])"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  assert out.stdout.strip() == "--xla_cpu_enable_concurrency_optimized_scheduler=false"
