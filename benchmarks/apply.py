"""Env steps/s of training with LPG vs A2C on the same environment, agent and seeds.

    python benchmarks/apply.py [--env Breakout] [--steps 200000] [--seeds 2]
                               [--rule artifact.pkl | --rule-hidden 256] [--chunks 10]

Both algorithms run through ``meta_test.train.make_train`` (the compiled ``lpg-apply``
path) with the defaults of ``meta_test.plan`` for the env's observation kind
(MinAtar: MLP 256x256 agent, Adam, 64 envs x 20 steps).  Steps/s exclude the
first chunk (compilation).  Target: LPG's cost per step <= 1.5x A2C's.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs import _xla_flags  # noqa: F401,E402
import jax  # noqa: E402

from lpg.rule import LPGConfig, LPGRule  # noqa: E402
from meta_test.baselines import A2CRule  # noqa: E402
from meta_test.plan import make_plan  # noqa: E402
from meta_test.train import make_train, run_seeds  # noqa: E402


def measure(env_name: str, algo: str, rule, params, steps: int, seeds: int, chunks: int,
            agent: str | None) -> dict:
  plan = make_plan(env_name, "a2c", steps, seeds, "/nonexistent-benchmark-out",
                   agent=agent)  # only for the defaults; nothing is written
  config = dataclasses.replace(plan.run, chunk=max(1, plan.num_updates // chunks))
  fns = make_train(plan.source.env, config, rule, params)
  res = run_seeds(fns, jax.random.split(jax.random.PRNGKey(0), seeds))
  return {"algo": algo, "steps_per_s": res.steps_per_s, "wall_s": res.run_s,
          "compile_s": res.chunk_s[0] - sum(res.chunk_s[1:]) / max(len(res.chunk_s) - 1, 1),
          "agent": f"{config.agent.kind}{list(config.agent.hidden)}", "B": config.num_envs,
          "T": config.rollout_len}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--env", default="Breakout")
  p.add_argument("--steps", type=int, default=200_000, help="env steps per seed")
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--chunks", type=int, default=10)
  p.add_argument("--agent", default="mlp")
  p.add_argument("--rule", default=None, help="rule artifact; default: a fresh rule")
  p.add_argument("--rule-hidden", type=int, default=256, help="LSTM width of a fresh rule")
  args = p.parse_args(argv)
  if args.rule:
    from lpg.artifact import load_rule
    loaded = load_rule(args.rule)
    rule, params, width = loaded.rule, loaded.params, loaded.config.hidden
  else:
    rule = LPGRule(LPGConfig(hidden=args.rule_hidden))
    params, width = rule.init(jax.random.PRNGKey(0)), args.rule_hidden
  rows = [measure(args.env, "a2c", A2CRule(), {}, args.steps, args.seeds, args.chunks, args.agent),
          measure(args.env, f"lpg (LSTM {width})", rule, params, args.steps, args.seeds,
                  args.chunks, args.agent)]
  base = rows[0]["steps_per_s"]
  print(f"\n{args.env}, {args.seeds} seeds x {args.steps} steps, agent {rows[0]['agent']}, "
        f"B={rows[0]['B']} T={rows[0]['T']}, {jax.devices()[0].platform}")
  print("| algo | env steps/s | cost per step vs A2C | compile s | wall s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['algo']} | {r['steps_per_s']:,.0f} | {base / r['steps_per_s']:.2f}x | "
          f"{r['compile_s']:.1f} | {r['wall_s']:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
