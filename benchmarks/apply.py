"""Env steps/s of training with LPG, A2C and PPO on the same environment, agent and seeds.

    python benchmarks/apply.py [--env Breakout] [--steps 200000] [--seeds 2]
                               [--rule artifact.pkl | --rule-hidden 256] [--chunks 10]
                               [--num-envs 64] [--rollout-len 20]

All run the compiled ``lpg-apply`` path (``meta_test.algos.ALGOS[...].train``; LPG and A2C
through ``meta_test.train.make_train``, PPO through ``meta_test.ppo``) with the same agent
(MLP 256x256 on MinAtar) and the same ``B`` x ``T`` per update (default 64 x 20; PPO then
takes its own epochs x minibatches per rollout).  Steps/s exclude the first chunk
(compilation).  Target: LPG's cost per step <= 1.5x A2C's.
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
from meta_test.algos import ALGOS, Choice  # noqa: E402
from meta_test.plan import make_plan  # noqa: E402
from meta_test.train import run_seeds  # noqa: E402


def measure(env_name: str, algo: str, label: str, steps: int, seeds: int, chunks: int,
            agent: str | None, num_envs: int, rollout_len: int, choice=None) -> dict:
  plan = make_plan(env_name, algo if choice is None else "a2c", steps, seeds,
                   "/nonexistent-benchmark-out", agent=agent, num_envs=num_envs,
                   rollout_len=rollout_len)  # only for the defaults; nothing is written
  config = dataclasses.replace(plan.run, chunk=max(1, plan.num_updates // chunks))
  fns = ALGOS[algo].train(plan.source.env, config, choice or plan.choice)
  res = run_seeds(fns, jax.random.split(jax.random.PRNGKey(0), seeds))
  return {"algo": label, "steps_per_s": res.steps_per_s, "wall_s": res.run_s,
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
  p.add_argument("--num-envs", type=int, default=64)
  p.add_argument("--rollout-len", type=int, default=20)
  args = p.parse_args(argv)
  if args.rule:
    from lpg.artifact import load_rule
    loaded = load_rule(args.rule)
    rule, params, width = loaded.rule, loaded.params, loaded.config.hidden
  else:
    rule = LPGRule(LPGConfig(hidden=args.rule_hidden))
    params, width = rule.init(jax.random.PRNGKey(0)), args.rule_hidden
  shape = (args.steps, args.seeds, args.chunks, args.agent, args.num_envs, args.rollout_len)
  rows = [measure(args.env, "a2c", "a2c", *shape),
          measure(args.env, "lpg", f"lpg (LSTM {width})", *shape,
                  choice=Choice("lpg", rule, params)),
          measure(args.env, "ppo", "ppo", *shape)]
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
