"""MetaGenRL behind the artifact and ``lpg-apply``: a saved objective loads back into the
same ``MetaGenRLRule`` (same outputs), unknown families are refused, and a tiny objective
trains fresh tabular and MLP agents through ``lpg-apply`` (compiled and host loop)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpg.artifact import ArtifactError, family_of, load_rule, save_rule
from lpg.metagenrl import MetaGenRLConfig, MetaGenRLRule
from meta_test import apply

CONFIG = MetaGenRLConfig(hidden=4, td_lambda=0.9, use_progress=True)
KNOWN = ("lpg", "metagenrl")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  rule = MetaGenRLRule(CONFIG)
  params = rule.init(jax.random.PRNGKey(0))
  path = str(tmp_path_factory.mktemp("mgenrl") / "mgenrl.pkl")
  checksum = save_rule(path, params, CONFIG, {"command": "test"})
  return path, params, checksum


def test_round_trip_rebuilds_the_same_objective(saved):
  path, params, checksum = saved
  loaded = load_rule(path, families=KNOWN)
  assert loaded.family == "metagenrl" == family_of(CONFIG) and loaded.checksum == checksum
  assert isinstance(loaded.rule, MetaGenRLRule) and loaded.config == CONFIG
  feats = jax.random.normal(jax.random.PRNGKey(1), (6, 3, CONFIG.num_features))
  done = jnp.zeros((6, 3)).at[2, 1].set(1.0)
  np.testing.assert_array_equal(loaded.rule.apply(loaded.params, feats, done),
                                MetaGenRLRule(CONFIG).apply(params, feats, done))


def test_lpg_only_callers_and_unknown_families_are_refused(saved, tmp_path):
  path = saved[0]
  with pytest.raises(ArtifactError, match="family 'metagenrl'; this needs 'lpg'"):
    load_rule(path)
  other = str(tmp_path / "other.pkl")
  save_rule(other, saved[1], CONFIG.to_dict(), family="dqn-objective")
  with pytest.raises(ArtifactError) as e:
    load_rule(other, families=KNOWN)
  assert "family 'dqn-objective'" in str(e.value) and "\n" not in str(e.value)


def test_shape_mismatch_with_the_stored_config_is_refused(saved, tmp_path):
  path = str(tmp_path / "bad.pkl")
  save_rule(path, saved[1], MetaGenRLConfig(hidden=5, use_progress=True))
  with pytest.raises(ArtifactError, match="shape"):
    load_rule(path, families=KNOWN)


def _apply(rule_path, out, *extra):
  assert apply.main(["--rule", rule_path, "--steps", "1280", "--seeds", "2", "--num-envs", "4",
                     "--rollout-len", "8", "--out", out, "--quiet", *extra]) == 0
  return json.load(open(os.path.join(out, "summary.json")))


@pytest.mark.parametrize("env, agent, compiled", [
    ("chain/short", None, True),                       # tabular agent
    ("CartPole", None, True),                          # MLP agent (vector)
    ("random/small", "conv", True),                    # conv agent (image)
    ("meta_test.examples:chain_short", None, False),   # a user env: the host loop
])
def test_a_metagenrl_objective_trains_through_lpg_apply(saved, tmp_path, env, agent, compiled):
  """``--algo lpg`` (the default) takes a rule of either family; the agent gets the value
  head ``v`` the objective reads (and n/N: this objective takes the lifetime progress)."""
  summary = _apply(saved[0], str(tmp_path / "run"), "--env", env,
                   *(["--agent", agent] if agent else []))
  assert summary["algo"] == "lpg" and summary["family"] == "metagenrl"
  assert summary["rule"]["family"] == "metagenrl" and summary["compiled"] is compiled
  assert summary["rule"]["config"] == CONFIG.to_dict()
  assert summary["hyperparameters"]["num_updates"] == 40
  assert np.all(np.isfinite(summary["final_return_per_seed"]))
