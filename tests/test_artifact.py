"""The rule artifact: exact round trip, and refusal of hostile or damaged files."""
import os
import pickle

import jax
import numpy as np
import pytest

from lpg import artifact
from lpg.artifact import ArtifactError, load_rule, save_rule
from lpg.rule import LPGConfig, LPGRule

CONFIG = LPGConfig(hidden=8, y_dim=4, phi_hidden=4)


@pytest.fixture(scope="module")
def params():
  return LPGRule(CONFIG).init(jax.random.PRNGKey(0))


@pytest.fixture
def saved(tmp_path, params):
  path = str(tmp_path / "rule.pkl")
  checksum = save_rule(path, params, CONFIG, {"command": "lpg-meta-train --preset smoke",
                                              "meta_updates": 3, "envs": ["chain/short"]})
  return path, checksum


def test_round_trip_is_exact(saved, params):
  path, checksum = saved
  loaded = load_rule(path)
  assert loaded.config == CONFIG
  assert loaded.checksum == checksum
  assert loaded.metadata["meta_updates"] == 3
  leaves_a = jax.tree_util.tree_leaves_with_path(params)
  leaves_b = jax.tree_util.tree_leaves_with_path(loaded.params)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (_, a), (_, b) in zip(leaves_a, leaves_b):
    assert np.asarray(a).dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), b)


class _MakeFile:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, "w"))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
  target = tmp_path / "pwned.txt"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"format": "lpg-rule", "x": _MakeFile(str(target))}))
  with pytest.raises(ArtifactError, match="refusing to load"):
    load_rule(str(path))
  assert not target.exists()


def test_truncated_file_is_refused(saved, tmp_path):
  path, _ = saved
  data = open(path, "rb").read()
  cut = tmp_path / "cut.pkl"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(ArtifactError, match="truncated or corrupt"):
    load_rule(str(cut))


def _rewrite(path, tmp_path, mutate):
  payload = pickle.loads(open(path, "rb").read())
  mutate(payload)
  out = tmp_path / "mutated.pkl"
  out.write_bytes(pickle.dumps(payload))
  return str(out)


def test_wrong_version_is_refused(saved, tmp_path):
  path, _ = saved
  bad = _rewrite(path, tmp_path, lambda p: p.update(format_version=99))
  with pytest.raises(ArtifactError, match="format version 99"):
    load_rule(bad)


def test_tampered_file_fails_checksum(saved, tmp_path):
  path, _ = saved

  def flip(p):
    a = p["params"]["pi_hat/b"]
    a["data"] = np.full(a["shape"], 7.0, np.dtype(a["dtype"])).tobytes()
  with pytest.raises(ArtifactError, match="checksum"):
    load_rule(_rewrite(path, tmp_path, flip))


def test_wrong_shape_and_non_finite_are_refused(params, tmp_path):
  path = str(tmp_path / "r.pkl")
  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad["pi_hat"]["b"] = np.zeros((3,), np.float32)
  save_rule(path, bad, CONFIG, {})
  with pytest.raises(ArtifactError, match="shape"):
    load_rule(path)
  nan = jax.tree_util.tree_map(lambda x: np.asarray(x).copy(), params)
  nan["pi_hat"]["w"][0, 0] = np.nan
  save_rule(path, nan, CONFIG, {})
  with pytest.raises(ArtifactError, match="non-finite"):
    load_rule(path)


def test_missing_and_not_a_rule(tmp_path):
  with pytest.raises(ArtifactError, match="does not exist"):
    load_rule(str(tmp_path / "nope.pkl"))
  other = tmp_path / "other.pkl"
  other.write_bytes(pickle.dumps({"hello": [1, 2]}))
  with pytest.raises(ArtifactError, match="not an lpg rule"):
    load_rule(str(other))


def test_save_is_atomic_and_leaves_no_temporaries(saved):
  path, _ = saved
  assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp-")] == []
  assert artifact.FORMAT_VERSION == 1
