"""The rule artifact: exact round trip, and refusal of hostile or damaged files."""
import functools
import os
import pickle
import time

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


# ------------------------------------------------------------- bounded loading
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(err):
  msg = str(err.value)
  assert "\n" not in msg and msg
  return msg


def test_reference_bomb_is_refused_within_a_second(tmp_path):
  a = [0]
  for _ in range(4):
    a = [a] * 1000
  path = tmp_path / "bomb.pkl"
  path.write_bytes(pickle.dumps({"format": "lpg-rule", "params": a}))
  assert path.stat().st_size < 10_000
  t0 = time.perf_counter()
  with pytest.raises(ArtifactError, match="shared references") as err:
    load_rule(str(path))
  assert time.perf_counter() - t0 < 1.0
  _one_line(err)


@pytest.mark.parametrize("payload,match", [
    ([[] for _ in range(artifact.MAX_CONTAINERS + 1)], "containers"),
    (functools.reduce(lambda x, _: [x], range(artifact.MAX_DEPTH + 2), 0), "deeper"),
    ({"format": "lpg-rule", "s": {1, 2}}, "opcode"),
], ids=["containers", "depth", "set"])
def test_too_many_too_deep_or_non_plain_is_refused(tmp_path, payload, match):
  path = tmp_path / "x.pkl"
  path.write_bytes(pickle.dumps(payload))
  with pytest.raises(ArtifactError, match=match) as err:
    load_rule(str(path))
  _one_line(err)


def test_oversized_file_is_refused_before_reading(saved, monkeypatch):
  path, _ = saved
  monkeypatch.setattr(artifact, "MAX_BYTES", 100)
  with pytest.raises(ArtifactError, match="more than any lpg rule"):
    load_rule(path)


def test_empty_and_flipped_byte_files_are_refused_in_one_line(saved, tmp_path):
  path, _ = saved
  empty = tmp_path / "empty.pkl"
  empty.write_bytes(b"")
  with pytest.raises(ArtifactError, match="empty") as err:
    load_rule(str(empty))
  _one_line(err)
  data = bytearray(open(path, "rb").read())
  rng = np.random.default_rng(0)
  for i in rng.choice(len(data), 20, replace=False):
    flipped = bytearray(data)
    flipped[i] ^= 0xFF
    bad = tmp_path / "flipped.pkl"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError) as err:
      load_rule(str(bad))
    _one_line(err)


def test_checkpoints_and_directories_are_named_as_such(tmp_path, saved):
  npz = tmp_path / "checkpoint.npz"
  np.savez(npz, leaf_00000=np.zeros(3))
  with pytest.raises(ArtifactError, match="checkpoint.*use rule.pkl from the run directory"):
    load_rule(str(npz))
  run = tmp_path / "run"
  (run / "checkpoints" / "000010").mkdir(parents=True)
  (run / "config.json").write_text("{}")
  with pytest.raises(ArtifactError, match="checkpoint directory, not a rule artifact"):
    load_rule(str(run))
  os.replace(saved[0], run / "rule.pkl")
  with pytest.raises(ArtifactError, match=f"run directory.*use {run / 'rule.pkl'}"):
    load_rule(str(run))
  with pytest.raises(ArtifactError, match=f"checkpoint directory.*use {run / 'rule.pkl'}"):
    load_rule(str(run / "checkpoints"))
  plain = tmp_path / "elsewhere"
  plain.mkdir()
  with pytest.raises(ArtifactError, match="is a directory, expected a .pkl file"):
    load_rule(str(plain))


def test_shipped_artifact_still_loads():
  loaded = load_rule(os.path.join(REPO, "artifacts", "lpg_toy15.pkl"))
  assert loaded.family == "lpg" and loaded.extras == {} and loaded.rule is not None


def test_headline_artifact_loads_with_its_validation_record():
  """The headline rule: value inputs, its meta-test settings, Breakout and SpaceInvaders
  recorded as the games that chose it (so reports mark them validation)."""
  loaded = load_rule(os.path.join(REPO, "artifacts", "lpg_esvalue_cpu.pkl"))
  assert loaded.config.value_inputs and loaded.config.signlog_reward
  assert loaded.extras["meta_test"]["network"]["learning_rate"] == pytest.approx(4e-3)
  assert {"Breakout", "SpaceInvaders", "CartPole"} <= set(loaded.metadata["validate_envs"])
  # Step sizes chosen again by validation on longer lifetimes (lpg-ship --meta-test-lifetimes):
  # a 5M-step MinAtar run (~3,900 updates) gets the 4,000-update choice, classic control 200's.
  from meta_test.plan import for_lifetime
  by_life = loaded.extras["meta_test"]["network"]["by_lifetime"]
  assert [e["updates"] for e in by_life] == [200, 1000, 4000]
  assert for_lifetime(by_life, 3906)["learning_rate"] == pytest.approx(2e-3)
  assert for_lifetime(by_life, 234)["learning_rate"] == pytest.approx(4e-3)


def test_optional_fields_load_and_are_checksummed(params, tmp_path):
  path = str(tmp_path / "r.pkl")
  settings = {"meta_test": {"lr": 0.1, "steps": [1, 2]}, "note": None}
  checksum = save_rule(path, params, CONFIG, {"seed": 1}, extras=settings)
  loaded = load_rule(path)
  assert loaded.extras == settings and loaded.checksum == checksum and loaded.family == "lpg"
  bad = _rewrite(path, tmp_path, lambda p: p["meta_test"].update(lr=1.0))
  with pytest.raises(ArtifactError, match="checksum"):
    load_rule(bad)
  with pytest.raises(ValueError, match="core fields"):
    save_rule(path, params, CONFIG, extras={"params": 1})


def test_other_families_are_refused_unless_the_caller_accepts_them(params, tmp_path):
  path = str(tmp_path / "a2c.pkl")
  save_rule(path, params, {"entropy": 0.01}, family="a2c")
  with pytest.raises(ArtifactError, match="family 'a2c'; this needs 'lpg'"):
    load_rule(path)
  loaded = load_rule(path, families=("lpg", "a2c"))
  assert loaded.family == "a2c" and loaded.rule is None and loaded.config == {"entropy": 0.01}
  np.testing.assert_array_equal(loaded.params["pi_hat"]["b"], np.asarray(params["pi_hat"]["b"]))
