"""lpg-meta-train's recipe flags (FLAGS.md): --rule-inputs, --num-inner and --num-envs reach
the config,
config.json and the rule artifact; bad values are one-line errors (exit 2, nothing written).

K=20 with rematerialisation giving the same meta-gradient as without is
``tests/test_meta_gradient.py::test_k20_rematerialised_meta_gradient_equals_stored``.
"""
import json
import os

import pytest

from lpg.artifact import load_rule
from meta_train.cli import build_parser, main, make_config
from meta_train_helpers import TINY
from meta_train_helpers import tiny_run as _run_tiny

FIELDS = ("lifetime_inputs", "signlog_reward", "normalise_reward", "value_inputs")


def _config(*argv):
  return make_config(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("spec,on", [
    ("signlog,normalise", {"signlog_reward", "normalise_reward"}),
    ("value, lifetime", {"value_inputs", "lifetime_inputs"}),
    ("none", set()),
])
def test_rule_inputs_set_exactly_the_named_fields(spec, on):
  rule = _config("--preset", "es-tiny", "--rule-inputs", spec).rule  # es-tiny has lifetime on
  assert {f for f in FIELDS if getattr(rule, f)} == on
  assert rule.hidden == 8  # the preset's other fields stay


def test_omitted_flags_keep_the_preset():
  c = _config("--preset", "es-tiny")
  assert c.rule.lifetime_inputs and c.meta.num_inner == 2 and not c.meta.remat_inner


@pytest.mark.parametrize("k,remat", [(3, False), (5, False), (6, True), (20, True)])
def test_num_inner_sets_k_and_rematerialises_long_k(k, remat):
  meta = _config("--preset", "smoke", "--num-inner", str(k)).meta
  assert (meta.num_inner, meta.remat_inner, meta.rollout_len) == (k, remat, 20)


def test_num_envs_sets_b_and_keeps_k():
  meta = _config("--preset", "recipe-cpu", "--num-envs", "8", "--num-inner", "3").meta
  assert (meta.num_envs, meta.num_inner, meta.rollout_len) == (8, 3, 20)
  assert _config("--preset", "recipe-cpu").meta.num_envs == 32


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
  return _run_tiny(tmp_path_factory, 2, 2, "--rule-inputs", "signlog,normalise",
                   "--num-inner", "4", "--num-envs", "2")


def test_flags_are_recorded_in_config_json_and_the_artifact(recipe_run):
  config = json.load(open(os.path.join(recipe_run, "config.json")))["config"]
  rule = load_rule(os.path.join(recipe_run, "rule.pkl")).config
  for c in (config["rule"], vars(rule)):
    assert {f for f in FIELDS if c[f]} == {"signlog_reward", "normalise_reward"}
  assert config["meta"]["num_inner"] == 4 and config["meta"]["num_envs"] == 2


@pytest.mark.parametrize("argv,needle", [
    (["--rule-inputs", "signlog,foo"], "give a comma list of lifetime, signlog, normalise, value"),
    (["--rule-inputs", ","], "or none"),
    (["--num-inner", "0"], "must be >= 1"),
    (["--num-inner", "x"], "is not a number"),
    (["--num-inner", "9"], "lifetime-updates (8) must be >= K (9)"),
    (["--num-envs", "0"], "must be >= 1"),
])
def test_bad_recipe_flags_one_line_exit_2(argv, needle, tmp_path, capsys):
  code = main(TINY + argv + ["--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("lpg-meta-train: error:"), err
  assert needle in err[0]
  assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("argv,needle", [
    (["--num-inner", "3"], "--num-inner 3 (the run has 4)"),
    (["--rule-inputs", "none"], "--rule-inputs none (the run has signlog,normalise)"),
    (["--num-envs", "4"], "--num-envs 4 (the run has 2)"),
])
def test_resume_refuses_another_recipe(recipe_run, argv, needle, capsys):
  assert main(["--out", recipe_run, "--resume", "--no-progress"] + argv) == 2
  assert needle in capsys.readouterr().err


def test_resume_accepts_the_same_recipe(recipe_run, capsys):
  assert main(["--out", recipe_run, "--resume", "--no-progress", "--rule-inputs",
               "normalise,signlog", "--num-inner", "4", "--num-envs", "2"]) == 0
