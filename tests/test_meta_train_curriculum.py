"""The level curriculum inside the meta-training job (``--curriculum``, ``meta_train.levels``).

The table itself is tested in ``test_curriculum.py``; here: the wiring through
``trainer.bookkeep`` (a rigged case: levels that scored high come back), the
learnability score by hand, bad input, metrics.jsonl, and kill -9 + --resume
reaching the same rule and the same table as an uninterrupted run.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.procgen_returns import level_reference
from lpg.meta_objective import MetaMetrics
from meta_train import bandit, levels, population
from meta_train.cli import main
from meta_train.config import PRESETS
from meta_train.trainer import bookkeep, fresh_lives, make_setup
from meta_train_helpers import TINY, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "meta_train_kill_driver.py")
CURRICULUM = ["--envs", "procgen/chain,chain/short", "--curriculum", "regret",
              "--agents-per-env", "4", "--lifetime-updates", "4"]
ARGS = TINY + ["--num-updates", "6", "--checkpoint-every", "2"] + CURRICULUM


def _metrics(pvl, episodes=1.0):
  p = pvl.shape[0]
  z = jnp.zeros((p,), jnp.float32)
  return MetaMetrics(meta_loss=z, pg=z, entropy=z, y_entropy=z, pi_hat_sq=z, y_hat_sq=z,
                     return_sum=z, episodes=z + episodes, critic_loss=z, positive_value_loss=pvl)


def test_rigged_job_sampling_replays_the_high_score_levels():
  """8 lifetimes end; the two on levels with regret 1 (the others 0) are replayed far more
  often than the rest among the next lifetimes' levels (bookkeep -> table -> fresh lives)."""
  config = dataclasses.replace(PRESETS["tiny"], envs=("procgen/chain",), agents_per_env=8,
                               curriculum="regret")
  setup = make_setup(config)
  arms = jnp.zeros((8,), jnp.int32)
  group = population.first_generation(fresh_lives(setup, 0, jax.random.PRNGKey(0), arms),
                                      arms, None)
  played = group.lives.env_params.level_seed
  lives = group.lives._replace(age=group.lives.horizon)  # every lifetime ends now
  pvl = jnp.where(jnp.arange(8) < 2, 1.0, 0.0)
  table = levels.init_states(setup.curricula)[0]
  b = bandit.init(*setup.arm_table.shape[:2])

  @jax.jit
  def next_levels(key):
    new, _, stats, tab = bookkeep(setup, 0, group, lives, _metrics(pvl), b, key, table)
    return new.lives.env_params.level_seed, stats.curriculum, tab

  draws, stats, tab = jax.vmap(next_levels)(jax.random.split(jax.random.PRNGKey(1), 200))
  assert set(np.asarray(tab.seeds[0][:8])) == set(np.asarray(played))
  seeds = np.asarray(draws).ravel()
  high = np.isin(seeds, np.asarray(played[:2])).mean()
  low = np.isin(seeds, np.asarray(played[2:])).mean()
  replayed = high + low
  assert 0.4 < replayed < 0.6  # replay_prob 0.5; the rest are fresh levels
  assert high / replayed > 0.6 and high / 2 > 5 * (low / 6)  # per level: > 5x as often
  row = dict(zip(levels.STATS, np.asarray(stats).mean(0)))
  assert row["levels"] == 8 and row["new_lifetimes"] == 8
  np.testing.assert_allclose(row["replayed"] / 8, replayed, atol=1e-6)
  np.testing.assert_allclose(row["mean_score"], 0.25)


def test_learnability_score_by_hand():
  """p (1 - p) of the return normalised by the lifetime's own level: 0.25 half-way, 0 at
  the random and the optimal return."""
  config = dataclasses.replace(PRESETS["tiny"], envs=("procgen/chain",), agents_per_env=3,
                               curriculum="learnability")
  setup = make_setup(config)
  env = setup.problems[0].env
  lives = fresh_lives(setup, 0, jax.random.PRNGKey(3), jnp.zeros((3,), jnp.int32))
  opt, rnd = jax.vmap(lambda lv: level_reference(env, lv))(lives.env_params)
  ret = jnp.stack([rnd[0], (opt[1] + rnd[1]) / 2, opt[2]])
  done = jnp.array([True, True, True])
  got = levels.lifetime_scores("learnability", env, lives, ret, _metrics(jnp.zeros(3)), done)
  np.testing.assert_allclose(got, [0.0, 0.25, 0.0], atol=1e-6)
  got = levels.lifetime_scores("learnability", env, lives, ret, _metrics(jnp.zeros(3)),
                               done.at[1].set(False))
  got = np.asarray(got)
  assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()


@pytest.mark.parametrize("argv,needle", [
    (["--curriculum", "regret"], "add one of procgen/tabular, procgen/random, procgen/chain"),
    (["--curriculum", "hard"], "invalid choice: 'hard'"),
    (["--envs", "procgen/random", "--curriculum", "learnability"], "use --curriculum regret"),
    (["--preset", "es-tiny", "--envs", "procgen/chain", "--curriculum", "regret"],
     "needs --meta-optimizer gradient"),
])
def test_bad_curriculum_one_line_exit_2(argv, needle, tmp_path, capsys):
  code = main(["--preset", "tiny", "--no-progress", *argv, "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("lpg-meta-train: error:"), err
  assert needle in err[0]
  assert not os.path.exists(tmp_path / "o")


def _final(out):
  """The rule's parameters and the curriculum table of a run's last checkpoint."""
  path = os.path.join(out, "checkpoint-00000006.npz")
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files if k.startswith(("rule_params/", "curricula/"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  return tiny_run(tmp_path_factory, 6, 2, *CURRICULUM)


def test_metrics_log_the_level_statistics(uninterrupted):
  lines = [json.loads(l) for l in open(os.path.join(uninterrupted, "metrics.jsonl"))]
  lines = [l for l in lines if "envs" in l]
  assert "curriculum" not in lines[-1]["envs"]["chain/short"]
  stats = [l["envs"]["procgen/chain"]["curriculum"] for l in lines]
  assert set(stats[-1]) == {"levels", "mean_score", "max_score", "mean_staleness",
                            "new_lifetimes", "replay_fraction"}
  assert stats[-1]["levels"] >= 1 and sum(s["new_lifetimes"] for s in stats) >= 4
  config = json.load(open(os.path.join(uninterrupted, "config.json")))["config"]
  assert config["curriculum"] == "regret"


def test_kill_then_resume_same_rule_and_same_table(uninterrupted, tmp_path, capsys):
  out = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  p = subprocess.run([sys.executable, DRIVER, "after-call", "3", *ARGS, "--out", out], env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == -9, p.stderr
  assert main(["--out", out, "--resume", "--no-progress"]) == 0
  a, b = _final(uninterrupted), _final(out)
  assert any(k.startswith("curricula/0/") for k in a) and a.keys() == b.keys()
  assert int(a["curricula/0/clock"]) == 6 and (a["curricula/0/seeds"] >= 0).any()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
