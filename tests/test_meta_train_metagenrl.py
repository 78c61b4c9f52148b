"""``lpg-meta-train --family metagenrl``: the MetaGenRL path of the job (run directory,
metrics, validation, artifacts of family metagenrl, kill -9 and resume bit for bit, bad
flag combinations refused) and meta-training with MLP agents."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lpg.artifact import load_rule
from lpg.metagenrl import MetaGenRLConfig, MetaGenRLRule
from meta_train import checkpoint
from meta_train.cli import main
from meta_train.config import PRESETS, TrainConfig
from meta_train_helpers import fresh_run, run_files_and_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "meta_train_kill_driver.py")
TINY = ["--family", "metagenrl", "--no-progress"]
KNOWN = ("lpg", "metagenrl")


def _rule(out, name="rule.pkl"):
  return load_rule(os.path.join(out, name), families=KNOWN)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """``--family metagenrl`` alone: the mgenrl-tiny preset, 4 meta-updates."""
  return fresh_run(tmp_path_factory, TINY)


def test_tiny_run_writes_the_run_directory(straight_run):
  out, lines = straight_run, run_files_and_metrics(straight_run, [2, 4])
  record = json.load(open(os.path.join(out, "config.json")))
  assert record["preset"] == "mgenrl-tiny" and record["config"]["family"] == "metagenrl"
  assert TrainConfig.from_dict(record["config"]) == PRESETS["mgenrl-tiny"]
  train = [l for l in lines if "critic_loss" in l]
  assert [l["meta_update"] for l in train] == [1, 2, 3, 4]
  steps = PRESETS["mgenrl-tiny"].agent_steps_per_update
  assert steps == 2 * 8 * 4
  for l in train:
    assert l["agent_steps"] == l["meta_update"] * steps and l["skipped"] == 0
    assert np.isfinite([l["critic_loss"], l["meta_value"], l["policy_entropy"]]).all()
  assert [l["meta_update"] for l in lines if "validation_score" in l] == [2, 4]
  rule, best = _rule(out), _rule(out, "rule_best.pkl")
  assert rule.family == best.family == "metagenrl" and isinstance(rule.rule, MetaGenRLRule)
  assert rule.config == PRESETS["mgenrl-tiny"].rule and rule.metadata["meta_updates"] == 4
  assert rule.extras["meta_test"]["tabular"]["learning_rate"] == 10.0
  assert best.metadata["validated_at"] in (2, 4)


def test_kill_then_resume_gives_the_same_rule_bit_for_bit(straight_run, tmp_path):
  """SIGKILL after the third meta-update (checkpoint at 2), then --resume."""
  out = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  p = subprocess.run([sys.executable, DRIVER, "after-call", "3", *TINY, "--out", out], env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == -9, p.stderr
  assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
  assert main(["--out", out, "--resume", "--no-progress"]) == 0
  a, b = _rule(straight_run), _rule(out)
  assert a.metadata["meta_updates"] == b.metadata["meta_updates"] == 4
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [l["meta_update"] for l in lines if "critic_loss" in l] == [1, 2, 3, 4]


@pytest.mark.parametrize("argv, needle", [
    (TINY + ["--preset", "smoke"], "--preset smoke is a lpg preset, not metagenrl"),
    (["--preset", "mgenrl-tiny", "--meta-optimizer", "es"], "takes neither --meta-optimizer es"),
    (TINY + ["--lifetime-updates-min", "2"], "takes neither"),
    (["--family", "dqn"], "invalid choice"),
])
def test_bad_flag_combinations_one_line_exit_2(argv, needle, tmp_path, capsys):
  out = str(tmp_path / "run")
  assert main(argv + ["--out", out]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err and "error:" in err, err
  assert not os.path.exists(out)


def test_resume_refuses_another_family_and_an_lpg_init_rule(straight_run, tmp_path, capsys):
  before = sorted(os.listdir(straight_run))
  assert main(["--out", straight_run, "--resume", "--family", "lpg"]) == 2
  assert "--family lpg (the run has metagenrl)" in capsys.readouterr().err
  assert sorted(os.listdir(straight_run)) == before
  from lpg.artifact import save_rule
  from lpg.rule import LPGConfig, LPGRule
  lpg_rule = str(tmp_path / "lpg.pkl")
  config = LPGConfig(hidden=4, y_dim=2, phi_hidden=2)
  save_rule(lpg_rule, LPGRule(config).init(jax.random.PRNGKey(0)), config)
  out = str(tmp_path / "run")
  assert main(TINY + ["--out", out, "--init-rule", lpg_rule]) == 2
  assert "family 'lpg'; this needs 'metagenrl'" in capsys.readouterr().err


def test_meta_training_with_mlp_agents_is_finite_and_moves_the_objective():
  """Two meta-steps with MLP agents on a random grid (image observations, flattened)."""
  from lpg.networks import AgentConfig
  from lpg.rule import make_hypers
  from lpg.update import OptimizerConfig
  import envs
  from meta_train.metagenrl import MetaGenRLProblem, MetaGenRLTrainConfig, run_meta_train
  rule = MetaGenRLRule(MetaGenRLConfig(hidden=4))
  config = MetaGenRLTrainConfig(num_agents=2, rollout_len=6, num_envs=4, buffer_segments=8,
                                batch_segments=2, meta_lr=1e-2)
  problems = [MetaGenRLProblem(envs.make("random/small"), rule,
                               AgentConfig("mlp", hidden=(16,)), OptimizerConfig("adam"), config)]
  initial = rule.init(jax.random.PRNGKey(0))
  ms, history = run_meta_train(problems, [make_hypers(1e-3)], 2, chunk=2, rule_params=initial)
  for world in history[0]:
    assert np.isfinite(world.critic_loss).all() and np.isfinite(world.meta_value).all()
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(ms.rule_params),
                                                       jax.tree_util.tree_leaves(initial))]
  assert np.isfinite(moved).all() and max(moved) > 1e-4
