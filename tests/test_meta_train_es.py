"""``lpg-meta-train --meta-optimizer es``: the ES path of the job (runs, resumes bit for bit,
refuses bad values)."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from lpg.artifact import load_rule
from meta_train.cli import main
from meta_train.config import PRESETS, TrainConfig
from meta_train_helpers import run_files_and_metrics

ES_TINY = ["--preset", "es-tiny", "--no-progress"]


def _params(path):
  return jax.tree_util.tree_leaves(load_rule(path).params)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("es") / "run")
  assert main(ES_TINY + ["--out", out]) == 0
  return out


def test_es_tiny_writes_rule_metrics_and_checkpoints(straight_run):
  out = straight_run
  lines = run_files_and_metrics(out, [2, 4])
  train = [l for l in lines if "fitness_mean" in l]
  assert [l["meta_update"] for l in train] == [1, 2, 3, 4]
  config = PRESETS["es-tiny"]
  for l in train:
    assert l["fitness_max"] >= l["fitness_mean"] - 1e-6
    assert l["agent_steps"] == l["meta_update"] * config.agent_steps_per_update
    assert config.lifetime_updates_min <= l["lifetime_updates"] <= config.lifetime_updates
  assert [l["meta_update"] for l in lines if "validation_score" in l] == [2, 4]
  rule = load_rule(os.path.join(out, "rule.pkl"))
  assert rule.metadata["meta_updates"] == 4
  assert rule.metadata["train_config"]["meta_optimizer"] == "es"
  assert rule.config.lifetime_inputs
  assert "meta_test" in rule.extras


def test_es_resume_equals_uninterrupted_run_bit_for_bit(straight_run, tmp_path):
  out = str(tmp_path / "run")
  assert main(ES_TINY + ["--out", out, "--num-updates", "2"]) == 0
  assert main(["--out", out, "--resume", "--num-updates", "4", "--no-progress"]) == 0
  for a, b in zip(_params(os.path.join(straight_run, "rule.pkl")),
                  _params(os.path.join(out, "rule.pkl"))):
    np.testing.assert_array_equal(a, b)
  lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [l["meta_update"] for l in lines if "fitness_mean" in l] == [1, 2, 3, 4]


@pytest.mark.parametrize("argv, needle", [
    (["--es-sigma", "-0.1"], "es-sigma must be a finite number > 0"),
    (["--es-population", "5"], "es-population must be even"),
    (["--es-entropy-coef", "-1"], "es-entropy-coef must be a finite number >= 0"),
])
def test_bad_es_values_one_line_exit_2(argv, needle, tmp_path, capsys):
  out = str(tmp_path / "run")
  assert main(ES_TINY + ["--out", out] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err and "error:" in err
  assert not os.path.exists(out)


def test_resume_refuses_a_change_of_meta_optimizer(straight_run, capsys):
  before = sorted(os.listdir(straight_run))
  assert main(["--out", straight_run, "--resume", "--meta-optimizer", "gradient"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "--meta-optimizer gradient (the run has es)" in err
  assert sorted(os.listdir(straight_run)) == before


def test_old_config_without_es_fields_loads():
  old = {k: v for k, v in PRESETS["tiny"].to_dict().items()
         if k not in ("meta_optimizer", "es_population", "es_sigma", "es_lr", "es_window",
                      "es_seeds")}
  config = TrainConfig.from_dict(old)
  assert config.meta_optimizer == "gradient" and config == PRESETS["tiny"]


@pytest.mark.slow
def test_es_on_four_simulated_devices_matches_one(straight_run, tmp_path):
  """The members sharded over 4 devices give the 1-device mean up to reduction order."""
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             "--xla_cpu_enable_concurrency_optimized_scheduler=false")
  env.pop("JAX_PLATFORMS", None)
  out = str(tmp_path / "run")
  p = subprocess.run([sys.executable, "-m", "meta_train.cli", *ES_TINY, "--out", out],
                     env=env, capture_output=True, text=True, timeout=400)
  assert p.returncode == 0, p.stderr
  assert "4 x cpu" in p.stderr
  for a, b in zip(_params(os.path.join(straight_run, "rule.pkl")),
                  _params(os.path.join(out, "rule.pkl"))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_lifetime_aware_rule_trains_through_lpg_apply(straight_run, tmp_path):
  """lpg-apply gives a lifetime-aware rule its real budget (n/N over its updates), compiled
  and through the gradient path's meta-objective alike (it used to raise: no progress)."""
  from meta_test import apply
  out = str(tmp_path / "apply")
  assert apply.main(["--rule", os.path.join(straight_run, "rule.pkl"), "--env", "chain/short",
                     "--steps", "2560", "--seeds", "2", "--num-envs", "4", "--rollout-len", "8",
                     "--out", out, "--quiet"]) == 0
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["algo"] == "lpg" and summary["hyperparameters"]["num_updates"] == 80


def test_entropy_bonus_raises_the_fitness_of_the_same_generation(tmp_path):
  """The same first generation (same keys) with and without the bonus: the bonus (weight 1,
  normalised entropy in (0, 1]) lifts every member's fitness by at most 1."""
  from meta_train.es_train import make_es_train
  plain, bonus = (make_es_train(dataclasses.replace(PRESETS["es-tiny"], es_entropy_coef=c))
                  for c in (0.0, 1.0))
  _, m0 = plain.run(plain.init(0), 1)
  _, m1 = bonus.run(bonus.init(0), 1)
  gain = float(m1.fitness_mean[0] - m0.fitness_mean[0])
  assert 0.0 < gain <= 1.0 + 1e-6
  config = json.load(open(os.path.join(_run_with_bonus(tmp_path), "config.json")))["config"]
  assert config["es_entropy_coef"] == 0.05


def _run_with_bonus(tmp_path):
  out = str(tmp_path / "bonus")
  assert main(ES_TINY + ["--out", out, "--num-updates", "1", "--es-entropy-coef", "0.05",
                         "--validate-every", "0"]) == 0
  return out
