"""The meta-training job: end to end, resume bit for bit, NaN safety, bad input."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpg.artifact import load_rule
from meta_train import checkpoint, job
from meta_train.cli import main
from meta_train_helpers import TINY, tiny_run


def _params(path):
  return load_rule(path).params


def _assert_same(a, b):
  for mod in a:
    for name in a[mod]:
      np.testing.assert_array_equal(a[mod][name], b[mod][name])


@pytest.fixture
def nan_from(monkeypatch):
  """``nan_from(k)``: from meta-update k on, every meta-update's rule step is non-finite.

  Injected from outside the compiled step: the job's ``run`` is wrapped so that each
  call from step k on sees NaN Adam moments (so its new rule is non-finite and the
  update is skipped); the run's real optimiser state is put back afterwards.
  """
  real = job.make_meta_train

  def arm(k):
    def patched(config, mesh=None, **kw):
      mt = real(config, mesh, **kw)

      def run(state, n):
        if int(state.step) < k:
          return mt.run(state, n)
        nan = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan) if jnp.issubdtype(
            x.dtype, jnp.floating) else x, state.meta_opt_state)
        kept = jax.tree_util.tree_map(jnp.copy, state.meta_opt_state)
        new, metrics = mt.run(state._replace(meta_opt_state=nan), n)
        return new._replace(meta_opt_state=kept), metrics
      return mt._replace(run=run)
    monkeypatch.setattr(job, "make_meta_train", patched)
  return arm


def _latest_header(out):
  return checkpoint.read_header(checkpoint.list_checkpoints(out)[-1][1])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  return tiny_run(tmp_path_factory, 4, 2)


def test_tiny_run_writes_the_contract(straight_run):
  out = straight_run
  for f in ("config.json", "metrics.jsonl", "checkpoint-00000004.npz", "rule.pkl"):
    assert os.path.isfile(os.path.join(out, f)), f
  assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2, 4]
  lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [l["meta_update"] for l in lines] == [1, 2, 3, 4]
  for key in ("meta_loss", "grad_norm", "agent_steps_per_s", "wall_time_s", "envs", "skipped"):
    assert key in lines[-1]
  env = lines[-1]["envs"]["chain/short"]
  assert "bandit_best" in env and "normalised_return" in env
  rule = load_rule(os.path.join(out, "rule.pkl"))
  assert rule.metadata["meta_updates"] == 4
  assert rule.metadata["command"].startswith("lpg-meta-train --preset tiny")
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["devices"]["count"] >= 1
  assert [h["command"] for h in config["history"]] == [rule.metadata["command"]]


def test_resume_equals_uninterrupted_run_bit_for_bit(straight_run, tmp_path):
  out = str(tmp_path / "run")
  assert main(TINY + ["--out", out, "--num-updates", "2", "--checkpoint-every", "2"]) == 0
  assert main(["--out", out, "--resume", "--num-updates", "4", "--no-progress"]) == 0
  _assert_same(_params(os.path.join(straight_run, "rule.pkl")), _params(os.path.join(out, "rule.pkl")))
  lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [l["meta_update"] for l in lines] == [1, 2, 3, 4]
  history = json.load(open(os.path.join(out, "config.json")))["history"]
  assert len(history) == 2 and "--resume" in history[1]["command"]
  assert history[1]["changes"] == {"num_updates": [2, 4]}
  assert json.load(open(os.path.join(out, "config.json")))["config"]["num_updates"] == 4
  assert load_rule(os.path.join(out, "rule.pkl")).metadata["commands"] == [
      h["command"] for h in history]


def test_nan_meta_gradient_is_skipped_and_never_checkpointed(tmp_path, nan_from):
  nan_from(2)
  out = str(tmp_path / "run")
  argv = TINY + ["--out", out, "--checkpoint-every", "1"]
  assert main(argv + ["--num-updates", "4"]) == 0
  lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [l["skipped"] for l in lines] == [0, 0, 1, 1]
  assert lines[-1]["skipped_total"] == 2
  final = load_rule(os.path.join(out, "rule.pkl"))  # loading checks every array is finite
  assert final.metadata["meta_updates"] == 4
  assert _latest_header(out)["step"] == 4


def test_repeated_failures_stop_the_job_keeping_the_checkpoint(tmp_path, capsys, nan_from):
  nan_from(2)
  out = str(tmp_path / "run")
  argv = TINY + ["--out", out, "--checkpoint-every", "1",
                 "--max-consecutive-skips", "3", "--num-updates", "8"]
  assert main(argv) == 1
  err = capsys.readouterr().err
  assert "non-finite" in err and "last good checkpoint" in err
  assert _latest_header(out)["step"] == 4  # the update that tripped the limit is not checkpointed
  load_rule(os.path.join(out, "rule.pkl"))  # still loads: finite


@pytest.mark.parametrize("argv,needle", [
    (["--envs", "chain/shrot"], "did you mean 'chain/short'"),
    (["--envs", "everything"], "unknown environment"),
    (["--preset", "huge"], "unknown preset"),
    (["--num-updates", "-3"], "must be >= 0"),
    (["--agents-per-env", "0"], "must be >= 1"),
    (["--num-updates", "x"], "is not a number"),
])
def test_bad_input_one_line_exit_2(argv, needle, tmp_path, capsys):
  code = main(argv + ["--out", str(tmp_path / "o"), "--no-progress"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and err[0].startswith("lpg-meta-train: error:"), err
  assert needle in err[0]
  assert not os.path.exists(tmp_path / "o" / "config.json")


def test_out_is_a_file_or_non_empty_or_no_checkpoint(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("keep me")
  assert main(TINY + ["--out", str(f)]) == 2
  assert "is a file" in capsys.readouterr().err
  assert f.read_text() == "keep me"
  d = tmp_path / "full"
  d.mkdir()
  (d / "x.txt").write_text("data")
  assert main(TINY + ["--out", str(d)]) == 2
  assert "not empty" in capsys.readouterr().err
  assert main(TINY + ["--out", str(tmp_path / "empty"), "--resume"]) == 2
  assert "no run in" in capsys.readouterr().err
  assert os.listdir(d) == ["x.txt"]
