"""Path-keyed checkpoints: round trip, last N kept, stale temp files, mismatched trees refused."""
import os
from typing import NamedTuple

import numpy as np
import pytest

from meta_train import checkpoint
from meta_train.checkpoint import CheckpointError


class Inner(NamedTuple):
  w: np.ndarray
  b: np.ndarray


class State(NamedTuple):
  step: np.ndarray
  params: dict
  groups: tuple


class Renamed(NamedTuple):   # `params` renamed to `rule_params`
  step: np.ndarray
  rule_params: dict
  groups: tuple


class Reordered(NamedTuple):  # Inner with its two same-shaped fields swapped
  b: np.ndarray
  w: np.ndarray


def _state(step=3, width=2):
  rng = np.random.default_rng(step)
  inner = Inner(w=rng.standard_normal(width).astype(np.float32),
                b=rng.standard_normal(width).astype(np.float32))
  return State(step=np.asarray(step, np.int32),
               params={"lstm": {"w": rng.standard_normal((width, 3)).astype(np.float32)}},
               groups=(inner, Inner(w=np.zeros((2, 0), np.float32), b=np.ones(2, np.float32))))


def test_round_trip_keys_are_tree_paths(tmp_path):
  state = _state()
  path = checkpoint.save(str(tmp_path), state, step=3, extra={"wall_time_s": 1.5})
  assert os.path.basename(path) == "checkpoint-00000003.npz"
  with np.load(path) as z:
    assert set(z.files) == {"__header__", "step", "params/lstm/w", "groups/0/w", "groups/0/b",
                            "groups/1/w", "groups/1/b"}
  restored, header = checkpoint.restore(path, _state(step=0))
  assert header["step"] == 3 and header["wall_time_s"] == 1.5
  for a, b in zip(np.asarray(restored.groups[0]), np.asarray(state.groups[0])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(restored.params["lstm"]["w"], state.params["lstm"]["w"])
  assert restored.groups[1].w.shape == (2, 0)


def test_keeps_the_last_n_and_removes_stale_temp_files(tmp_path):
  for step in (2, 4, 6, 8):
    checkpoint.save(str(tmp_path), _state(step), step=step, keep=2)
  assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [6, 8]
  stale = [tmp_path / ".checkpoint-abc.tmp", tmp_path / ".tmp-xyz.part"]
  for p in stale:
    p.write_bytes(b"\0" * 1024)
  removed = checkpoint.remove_stale(str(tmp_path))
  assert sorted(removed) == sorted(map(str, stale))
  assert not any(p.exists() for p in stale)
  assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000006.npz", "checkpoint-00000008.npz"]


@pytest.mark.parametrize("template,needle", [
    (Renamed(*_state()), "missing rule_params/lstm/w; unexpected params/lstm/w"),
    (State(*_state()[:2], groups=(Reordered(*_state().groups[0]), _state().groups[1])),
     "another order (groups/0/w where groups/0/b belongs)"),
    (_state(width=5), "params/lstm/w is (2, 3) float32, this run needs (5, 3) float32"),
])
def test_a_checkpoint_whose_tree_does_not_match_is_refused(tmp_path, template, needle):
  path = checkpoint.save(str(tmp_path), _state(), step=3)
  with pytest.raises(CheckpointError) as e:
    checkpoint.restore(path, template)
  assert needle in str(e.value) and "\n" not in str(e.value)
  assert "new --out" in str(e.value)


def test_a_damaged_newest_checkpoint_names_the_way_forward(tmp_path):
  checkpoint.save(str(tmp_path), _state(2), step=2)
  path = checkpoint.save(str(tmp_path), _state(4), step=4)
  data = bytearray(open(path, "rb").read())
  open(path, "wb").write(bytes(data[: len(data) // 2]))
  with pytest.raises(CheckpointError) as e:
    checkpoint.restore_latest(str(tmp_path), _state())
  msg = str(e.value)
  assert "checkpoint-00000004.npz is damaged" in msg
  assert "delete it to resume from checkpoint-00000002.npz (meta-update 2)" in msg
  os.remove(path)
  state, header, _ = checkpoint.restore_latest(str(tmp_path), _state())
  assert header["step"] == 2 and int(state.step) == 2


def test_an_old_leaf_ordered_checkpoint_is_refused(tmp_path):
  path = str(tmp_path / "checkpoint-00000001.npz")
  np.savez(path, __header__=np.asarray('{"format": "lpg-meta-train-checkpoint", "version": 1}'),
           leaf_00000=np.zeros(1))
  with pytest.raises(CheckpointError, match="not a version-2 meta-training checkpoint"):
    checkpoint.restore(path, _state())
