"""Held-out validation inside lpg-meta-train (issue 13): scores, best rule, resume, refusal."""
import dataclasses
import json
import os

import numpy as np
import pytest

from lpg.artifact import load_rule
from meta_train import checkpoint, validation
from meta_train.cli import main
from meta_train.config import PRESETS
from meta_train_helpers import TINY, tiny_run


def _lines(out):
  return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
  return tiny_run(tmp_path_factory, 4, 2, "--validate-every", "2")


def test_validation_scores_reach_the_metrics_and_best_rule(validated_run):
  out = validated_run
  val = [l for l in _lines(out) if "validation" in l]
  assert [l["meta_update"] for l in val] == [2, 4]
  for l in val:
    task = l["validation"]["chain/long"]
    assert np.isfinite(task["return"]) and np.isfinite(task["score"])
    assert l["validation_score"] == pytest.approx(task["score"])
    assert l["agent_steps"] > 0
  assert [l["meta_update"] for l in _lines(out) if "envs" in l] == [1, 2, 3, 4]
  best = load_rule(os.path.join(out, validation.RULE_BEST))
  assert best.metadata["validated_at"] in (2, 4)
  assert json.load(open(os.path.join(out, validation.BASELINES)))["chain/long"] == [1.0, 0.0]


def test_artifact_carries_meta_test_settings(validated_run):
  settings = load_rule(os.path.join(validated_run, "rule.pkl")).extras["meta_test"]
  assert set(settings) == {"tabular"}
  s = settings["tabular"]
  assert s["learning_rate"] in (20.0, 40.0, 80.0, 160.0, 320.0)
  assert s["alpha_y"] == pytest.approx(0.1) or s["alpha_y"] in (0.5, 1.0)
  assert 0 < s["probability"] <= 1 and s["lifetime_updates"] == 8


def test_improved_keeps_the_higher_score():
  a, b = {"w": np.zeros(2)}, {"w": np.ones(2)}
  best = validation.initial_best(a)
  best = validation.improved(best, 0.5, 2, b)
  assert (float(best.score), int(best.step)) == (0.5, 2)
  kept = validation.improved(best, 0.1, 4, a)
  assert kept is best
  assert validation.improved(best, float("nan"), 6, a) is best


@pytest.fixture
def rigged(monkeypatch):
  """Validation scores taken from a list, one per validation, instead of training agents."""
  def arm(scores):
    scores = list(scores)

    def fake(validator, config, rule_params):
      s = scores.pop(0)
      task = {"return": s, "score": s, "grid_returns": [0.0, s, 0.0]}   # the middle lr best
      return {"validation": {"chain/long": task}, "validation_score": s,
              "settings": validation.chosen_settings(config, {"chain/long": task},
                                                     {"chain/long": "tabular"}, {"chain/long": (1.0, 0.0)})}
    monkeypatch.setattr(validation, "validate", fake)
  return arm


def _rule_at(out, step):
  path = checkpoint.path_for(out, step)
  with np.load(path) as z:
    return {k[len("train/rule_params/"):]: z[k] for k in z.files
            if k.startswith("train/rule_params/")}


def _flat(params):
  return {f"{m}/{n}": np.asarray(v) for m in params for n, v in params[m].items()}


def test_best_rule_is_the_higher_scoring_one_and_survives_resume(tmp_path, rigged):
  out = str(tmp_path / "run")
  argv = TINY + ["--out", out, "--validate-every", "2", "--checkpoint-every", "2"]
  rigged([0.9])
  assert main(argv + ["--num-updates", "2"]) == 0
  at_two = _rule_at(out, 2)
  rigged([0.2, 0.3])
  assert main(["--out", out, "--resume", "--num-updates", "6", "--no-progress"]) == 0
  best = load_rule(os.path.join(out, validation.RULE_BEST))
  assert best.metadata["validated_at"] == 2 and best.metadata["validation_score"] == pytest.approx(0.9)
  got = _flat(best.params)
  assert got.keys() == at_two.keys()
  for k in got:
    np.testing.assert_array_equal(got[k], at_two[k])
  val = [l for l in _lines(out) if "validation" in l]
  assert [(l["meta_update"], l["validation_best"]) for l in val] == [
      (2, pytest.approx(0.9)), (4, pytest.approx(0.9)), (6, pytest.approx(0.9))]
  with np.load(checkpoint.path_for(out, 6)) as z:
    assert float(z["best/score"]) == pytest.approx(0.9) and int(z["best/step"]) == 2
  # The resumed job read the best rule's settings back from the metrics.
  settings = best.extras["meta_test"]["tabular"]
  assert settings["chosen_by"] == "validation at meta-update 2"
  assert settings["learning_rate"] == validation.grid(PRESETS["tiny"], "tabular")[1][0]


def test_overlapping_validation_task_is_refused(tmp_path, capsys):
  out = str(tmp_path / "run")
  assert main(TINY + ["--out", out, "--validate-envs", "chain/short,chain/long"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "chain/short" in err[0] and "training env" in err[0]
  assert not os.path.exists(out)


def test_lpg_apply_uses_the_artifacts_settings_and_a_flag_overrides(validated_run, tmp_path):
  from meta_test.plan import ALPHA_Y, DEFAULTS, artifact_hypers, make_plan
  path = os.path.join(validated_run, "rule.pkl")
  stored = load_rule(path).extras["meta_test"]["tabular"]
  plan = make_plan("chain/long", "lpg", 1000, 1, str(tmp_path / "a"), rule_path=path)
  assert (plan.run.learning_rate, plan.run.alpha_y) == pytest.approx(
      (stored["learning_rate"], stored["alpha_y"]))
  plan = make_plan("chain/long", "lpg", 1000, 1, str(tmp_path / "b"), rule_path=path,
                   learning_rate=7.0)
  assert (plan.run.learning_rate, plan.run.alpha_y) == pytest.approx((7.0, stored["alpha_y"]))
  h = artifact_hypers(load_rule(path), "tabular", 7.0, 40.0)
  assert h["sources"] == {"learning_rate": "flag", "alpha_y": "artifact"}
  old = os.path.join(os.path.dirname(__file__), "..", "artifacts", "lpg_toy15.pkl")
  plan = make_plan("chain/long", "lpg", 1000, 1, str(tmp_path / "c"), rule_path=old)
  assert (plan.run.learning_rate, plan.run.alpha_y) == (DEFAULTS["index"].learning_rate, ALPHA_Y)
  assert artifact_hypers(load_rule(old), "mlp", None, 1e-3)["sources"] == {
      "learning_rate": "default", "alpha_y": "default"}


def test_plots_draw_training_and_validation_panels(validated_run, tmp_path):
  from meta_train import plots
  df = plots.score_frame(os.path.join(validated_run, "metrics.jsonl"))
  assert set(df.split) == {"train", "validation"}
  assert set(df[df.split == "validation"].task) == {"chain/long"}
  out = str(tmp_path / "curves.png")
  assert plots.main([validated_run, out, "--x", "agent_steps"]) == 0
  assert os.path.getsize(out) > 0


def test_lifetime_lengths_fixed_or_log_uniform():
  import dataclasses
  import jax
  from meta_train.config import PRESETS
  from meta_train.trainer import lifetime_lengths
  tiny = PRESETS["tiny"]
  fixed = lifetime_lengths(tiny, jax.random.PRNGKey(0), 5)
  assert fixed.tolist() == [8] * 5
  ranged = dataclasses.replace(tiny, lifetime_updates=200, lifetime_updates_min=4)
  n = np.asarray(lifetime_lengths(ranged, jax.random.PRNGKey(0), 2000))
  assert n.min() >= 4 and n.max() <= 200
  # log-uniform: about half the draws below the geometric mean sqrt(4 * 201) ~ 28
  assert 0.4 < np.mean(n < 28) < 0.6
  with pytest.raises(ValueError, match="lifetime-updates-min"):
    dataclasses.replace(tiny, lifetime_updates_min=1)


def test_ranged_lifetimes_run(tmp_path):
  out = str(tmp_path / "run")
  assert main(TINY + ["--out", out, "--num-updates", "2", "--lifetime-updates", "12",
                      "--lifetime-updates-min", "2"]) == 0
  s = load_rule(os.path.join(out, "rule.pkl")).extras["meta_test"]["tabular"]
  assert (s["lifetime_updates"], s["lifetime_updates_min"]) == (12, 2)


def test_validation_grid_is_fixed_per_kind_and_independent_of_the_bandit():
  from meta_train.config import TrainConfig
  c = TrainConfig()
  flat = lambda kind, config=c: np.ravel(validation.grid(config, kind))
  np.testing.assert_allclose(flat("network"), [2e-4, 0.5, 1e-3, 0.5, 4e-3, 0.5])
  np.testing.assert_allclose(flat("tabular"), [20.0, 0.5, 80.0, 0.5, 320.0, 0.5])
  one = dataclasses.replace(c, network_lrs=(1e-3,), alpha_ys=(0.5,))
  np.testing.assert_allclose(flat("network", one), [1e-3, 0.5])
  lrs, ays = validation.hypers_for(one, ("tabular", "network"))
  assert lrs.shape == ays.shape == (2, 3)
  np.testing.assert_allclose(lrs[1], [1e-3] * 3, rtol=1e-6)   # padded with its last point


def test_validate_scores_each_task_at_its_best_grid_point():
  from meta_train.config import TrainConfig
  c = TrainConfig()
  returns = np.array([[1.0, 5.0, 3.0], [0.2, 0.1, np.nan]], np.float32)
  seen = {}

  def scores(rule_params, lrs, ays):
    seen["lrs"] = lrs
    return returns
  v = validation.Validator(("T", "N"), ("tabular", "network"),
                           {"T": (11.0, 1.0), "N": (1.0, 0.0)}, scores)
  out = validation.validate(v, c, None)
  t, n = out["validation"]["T"], out["validation"]["N"]
  assert (t["return"], t["score"], t["learning_rate"]) == pytest.approx((5.0, 0.4, 80.0))
  assert t["grid_returns"] == pytest.approx([1.0, 5.0, 3.0])
  assert (n["return"], n["learning_rate"]) == pytest.approx((0.2, 2e-4))
  assert out["validation_score"] == pytest.approx((0.4 + 0.2) / 2)
  assert seen["lrs"].shape == (2, 3)


def test_procedural_validation_tasks_have_family_references():
  from envs import returns
  assert returns.family_pair("procgen/chain_val", num_levels=8) == pytest.approx((
      returns.family_pair("procgen/chain_val", num_levels=8)))
  opt, rand = returns.family_pair("procgen/chain_val", num_levels=32)
  assert opt > rand >= 0.0
  assert returns.family_pair("procgen/random_val") is None
  assert returns.family_pair("CartPole") is None
  assert returns.reference_pair("CartPole")[0] == 500.0


def test_chosen_settings_take_each_kinds_best_mean_grid_point():
  from meta_train.config import TrainConfig
  c = TrainConfig()
  tasks = {"T1": {"grid_returns": [1.0, 5.0, 3.0]}, "T2": {"grid_returns": [9.0, 1.0, 7.0]},
           "N": {"grid_returns": [0.1, float("nan"), 0.3]}}
  refs = {"T1": (11.0, 1.0), "T2": (11.0, 1.0), "N": (1.0, 0.0)}
  got = validation.chosen_settings(c, tasks, {"T1": "tabular", "T2": "tabular", "N": "network"},
                                   refs)
  # tabular means over T1, T2: (0 + .8) / 2 = .4, (.4 + 0) / 2 = .2, (.2 + .6) / 2 = .4 -> first.
  assert got["tabular"]["learning_rate"] == 20.0 and got["tabular"]["validation_score"] == (
      pytest.approx(0.4))
  assert got["tabular"]["validation_tasks"] == ["T1", "T2"]
  assert got["network"]["learning_rate"] == pytest.approx(4e-3)     # the NaN point is skipped
  assert got["network"]["alpha_y"] == pytest.approx(c.alpha_ys[len(c.alpha_ys) // 2])
  merged = validation.with_chosen({"tabular": {"learning_rate": 40.0, "probability": 0.3,
                                               "lifetime_updates": 8}}, got, 6)
  assert merged["tabular"]["learning_rate"] == 20.0 and "probability" not in merged["tabular"]
  assert merged["tabular"]["lifetime_updates"] == 8
  assert merged["tabular"]["chosen_by"] == "validation at meta-update 6"


def test_best_rule_carries_the_settings_its_validation_chose(validated_run):
  from meta_train.config import TrainConfig
  best = load_rule(os.path.join(validated_run, validation.RULE_BEST))
  s = best.extras["meta_test"]["tabular"]
  step = best.metadata["validated_at"]
  assert s["chosen_by"] == f"validation at meta-update {step}"
  config = TrainConfig.from_dict(json.load(open(os.path.join(validated_run, "config.json")))["config"])
  assert (s["learning_rate"], s["alpha_y"]) in validation.grid(config, "tabular")
  refs = {k: tuple(v) for k, v in json.load(open(os.path.join(validated_run,
                                                               validation.BASELINES))).items()}
  again = validation.settings_at(os.path.join(validated_run, "metrics.jsonl"), step, config, refs)
  assert again["tabular"]["learning_rate"] == s["learning_rate"]
  assert best.metadata["validate_envs"] == ["chain/long"]
  assert "probability" in load_rule(os.path.join(validated_run, "rule.pkl")).extras[
      "meta_test"]["tabular"]   # the last rule keeps the bandit's choice


def test_lpg_ship_packages_the_best_validated_rule(validated_run, tmp_path, capsys):
  import hashlib
  from meta_train import ship
  out = str(tmp_path / "artifacts")
  assert ship.main(["--run", validated_run, "--name", "lpg_tiny", "--out", out]) == 0
  meta = json.load(open(os.path.join(out, "lpg_tiny.json")))
  data = open(os.path.join(out, "lpg_tiny.pkl"), "rb").read()
  assert meta["checksum_sha256"] == hashlib.sha256(data).hexdigest()
  rule = load_rule(os.path.join(out, "lpg_tiny.pkl"))
  best = load_rule(os.path.join(validated_run, validation.RULE_BEST))
  assert rule.checksum == meta["rule_checksum"] and rule.metadata["name"] == "lpg_tiny"
  for m in best.params:
    for n in best.params[m]:
      np.testing.assert_array_equal(rule.params[m][n], best.params[m][n])
  assert meta["validate_envs"] == ["chain/long"] and meta["envs"] == ["chain/short"]
  assert meta["validation"]["meta_update"] == best.metadata["validated_at"]
  assert meta["meta_test"] == rule.extras["meta_test"] == best.extras["meta_test"]
  assert meta["meta_updates"] == best.metadata["validated_at"]       # the rule's, not the run's
  assert meta["run_totals"]["meta_update"] == 4
  for f in ("config.json", "metrics.jsonl.gz", "scores.png", "meta_training.png"):
    assert os.path.getsize(os.path.join(out, "lpg_tiny_train", f)) > 0
  capsys.readouterr()
  assert ship.main(["--run", validated_run, "--name", "lpg_tiny", "--out", out]) == 2
  assert ship.main(["--run", validated_run, "--name", "../x", "--out", out]) == 2
  assert ship.main(["--run", str(tmp_path / "none"), "--name", "y", "--out", out]) == 2
  assert ship.main(["--run", validated_run, "--name", "y", "--out", out,
                    "--selected-on", "Brekout"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 4 and "--overwrite" in err[0] and "--name" in err[1] and "--run" in err[2]
  assert "--selected-on" in err[3] and "Breakout" in err[3]          # the close match
  assert not os.path.exists(os.path.join(out, "y.pkl"))
  # Tasks that chose among candidates after meta-training are marked validation.
  from meta_test.report import task_roles
  assert ship.main(["--run", validated_run, "--name", "z", "--out", out,
                    "--selected-on", "Breakout,chain/long"]) == 0
  z = load_rule(os.path.join(out, "z.pkl"))
  assert z.metadata["validate_envs"] == ["chain/long", "Breakout"]
  assert z.metadata["selected_on"] == ["Breakout", "chain/long"]
  assert json.load(open(os.path.join(out, "z.json")))["selected_on"] == ["Breakout", "chain/long"]
  assert task_roles(z) == {"chain/long": "validation", "Breakout": "validation",
                           "chain/short": "train"}


def test_for_lifetime_takes_the_nearest_length_on_a_log_scale():
  from meta_test.plan import for_lifetime
  entries = [{"updates": n, "learning_rate": lr} for n, lr in ((200, 4e-3), (1000, 2e-3),
                                                               (4000, 1e-3))]
  assert for_lifetime(entries, 234)["updates"] == 200          # classic control, 300k steps
  assert for_lifetime(entries, 3906)["updates"] == 4000        # MinAtar, 5M steps
  assert for_lifetime(entries, 50_000)["updates"] == 4000
  tie = [{"updates": 800, "learning_rate": 1.0}, {"updates": 200, "learning_rate": 2.0}]
  assert for_lifetime(tie, 400)["updates"] == 200              # log-equidistant: the shorter
  assert for_lifetime([], 100) is None and for_lifetime(None, 100) is None
  assert for_lifetime([{"updates": 0, "learning_rate": 1.0}, "x"], 100) is None


def test_lifetime_settings_choose_per_length_over_every_candidate(monkeypatch):
  """A fake validation where short lifetimes favour the largest step size and long ones a
  small one (as the shipped rule's CartPole does): each length gets its own choice."""
  from meta_train.config import TrainConfig
  c = dataclasses.replace(TrainConfig(), validate_envs=("T", "N1", "N2"))
  best_at = {10: 4, 1000: 1}          # index of the best network candidate per lifetime

  def fake_make_scores(setup, names, seed):
    n = setup.config.validate_updates
    def scores(rule_params, lrs, ays):
      out = np.zeros(lrs.shape)
      out[0, 2] = 1.0                                    # tabular: the middle candidate
      out[1:, best_at[n]] = 0.5                          # networks: the lifetime's best
      out[2, 0] = np.nan                                 # a diverged point is skipped
      return out
    return scores
  monkeypatch.setattr(validation, "make_scores", fake_make_scores)
  monkeypatch.setattr(validation, "kind_of", lambda n: "tabular" if n == "T" else "network")
  refs = {"T": (1.0, 0.0), "N1": (1.0, 0.0), "N2": (2.0, 0.0)}
  got = validation.lifetime_settings(c, None, None, (10, 1000), refs)
  assert [e["updates"] for e in got["network"]] == [10, 1000]
  assert [e["learning_rate"] for e in got["network"]] == pytest.approx(
      [c.network_lrs[4], c.network_lrs[1]])
  assert got["network"][0]["validation_score"] == pytest.approx((0.5 + 0.25) / 2)
  assert got["network"][1]["scores"]["N2"][0] is None
  assert got["network"][1]["learning_rates"] == pytest.approx(list(c.network_lrs))
  assert [e["learning_rate"] for e in got["tabular"]] == [c.tabular_lrs[2]] * 2
  assert got["tabular"][0]["alpha_y"] == c.alpha_ys[len(c.alpha_ys) // 2]


def test_lpg_ship_meta_test_lifetimes_reach_lpg_apply(validated_run, tmp_path, capsys):
  from meta_test.plan import make_plan
  from meta_train import ship
  out = str(tmp_path / "artifacts")
  assert ship.main(["--run", validated_run, "--name", "life", "--out", out,
                    "--meta-test-lifetimes", "16,4"]) == 0
  assert "by lifetime" in capsys.readouterr().err
  path = os.path.join(out, "life.pkl")
  entries = load_rule(path).extras["meta_test"]["tabular"]["by_lifetime"]
  assert [e["updates"] for e in entries] == [4, 16]
  assert json.load(open(os.path.join(out, "life.json")))["meta_test"]["tabular"][
      "by_lifetime"] == entries
  for e in entries:
    assert e["learning_rate"] in (20.0, 40.0, 80.0, 160.0, 320.0)
    assert set(e["scores"]) == {"chain/long"} and len(e["scores"]["chain/long"]) == 5
  long = make_plan("chain/long", "lpg", 100_000, 1, str(tmp_path / "a"), rule_path=path)
  assert long.run.num_updates > 16
  assert long.run.learning_rate == pytest.approx(entries[1]["learning_rate"])
  assert long.hyper_sources["learning_rate"] == "artifact (16-update lifetimes)"
  flag = make_plan("chain/long", "lpg", 100_000, 1, str(tmp_path / "b"), rule_path=path,
                   learning_rate=7.0)
  assert flag.run.learning_rate == 7.0 and flag.hyper_sources["learning_rate"] == "flag"
  for bad in ("0,100", "4,x"):
    assert ship.main(["--run", validated_run, "--name", "bad", "--out", out,
                      "--meta-test-lifetimes", bad]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all("--meta-test-lifetimes" in l for l in err)
  assert not os.path.exists(os.path.join(out, "bad.pkl"))
