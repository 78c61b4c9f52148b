"""The algorithm table's PPO entry through ``lpg-apply`` (issue 14): per-observation-kind
defaults (``meta_test.ppo.PPO_DEFAULTS``) unless flags are given, recorded in
``summary.json``; compiled and vmapped over seeds with progress chunks."""
import dataclasses
import json
import os

import pytest

from lpg.cli import UserError

from meta_test import apply as apply_lib
from meta_test.plan import make_plan
from meta_test.ppo import PPO_DEFAULTS


def test_ppo_plan_takes_kind_defaults_unless_flags_given(tmp_path):
  plan = make_plan("CartPole", "ppo", 10_000, 1, str(tmp_path))
  d = PPO_DEFAULTS["vector"]
  assert (plan.run.num_envs, plan.run.rollout_len, plan.run.learning_rate) == (
      d.num_envs, d.rollout_len, d.learning_rate)
  assert plan.choice.settings == d
  plan = make_plan("Breakout", "ppo", 10_000, 1, str(tmp_path))
  assert plan.choice.settings == PPO_DEFAULTS["image"]
  plan = make_plan("CartPole", "ppo", 10_000, 1, str(tmp_path), num_envs=8, learning_rate=3e-4)
  assert plan.choice.settings == dataclasses.replace(d, num_envs=8, learning_rate=3e-4)
  assert (plan.run.num_envs, plan.run.learning_rate) == (8, 3e-4)


def test_apply_ppo_writes_its_settings(tmp_path):
  out = str(tmp_path / "o")
  assert apply_lib.main(["--env", "chain/short", "--algo", "ppo", "--steps", "4096", "--seeds",
                         "2", "--quiet", "--out", out]) == 0
  s = json.load(open(os.path.join(out, "summary.json")))
  assert s["algo"] == "ppo" and len(s["final_return_per_seed"]) == 2
  ppo = s["settings"]["algo_settings"]
  assert ppo["learning_rate"] == PPO_DEFAULTS["index"].learning_rate
  assert ppo["update_epochs"] == PPO_DEFAULTS["index"].update_epochs
  assert s["hyperparameters"]["num_updates"] == 8      # 4096 / (4 x 128)


def test_ppo_batch_that_minibatches_cannot_split_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="num_minibatches.*--num-envs"):
    make_plan("CartPole", "ppo", 10_000, 1, str(tmp_path), num_envs=3, rollout_len=3)
