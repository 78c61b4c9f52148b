"""Cost of one meta-update of the LPG core (issue: LPG core benchmark).

Prints compile time, seconds per meta-update, agent environment-steps per second
((K+1) x envs x rollout length x agents per meta-update) and peak RSS for a
stated configuration, on a tabular and a random-grid world.  The meta-update is
one compiled call of ``lpg.meta_objective.population_meta_grad``, the function the
job's meta-update (``meta_train.trainer.estimate``) calls for each training
environment, with the same chunking and rematerialisation options.

    python benchmarks/meta_step.py                       # 8 agents x 64 envs x 20 steps, K=5, LSTM-256
    python benchmarks/meta_step.py --hidden 64 --agents 32
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

# benchmarks/envs.py would shadow the envs package: drop this folder from the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
import envs  # noqa: E402,F401  (importing a project package applies the XLA CPU guard)

import jax
import pandas as pd

import envs
from lpg.meta_objective import MetaConfig, MetaProblem, population_meta_grad
from lpg.networks import AgentConfig
from lpg.rule import LPGConfig, LPGRule, make_hypers
from lpg.update import OptimizerConfig


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(env_name: str, agents: int, num_envs: int, rollout: int, k: int, hidden: int,
            repeats: int, chunk: int = 0, remat: bool = False) -> dict:
  env = envs.make(env_name)
  rule = LPGRule(LPGConfig(hidden=hidden))
  if env.obs_spec.kind == "index":
    agent, opt, lr = AgentConfig("tabular"), OptimizerConfig("sgd"), 40.0
  else:
    agent, opt, lr = AgentConfig("mlp", hidden=(64,)), OptimizerConfig("adam"), 1e-3
  meta = MetaConfig(num_inner=k, rollout_len=rollout, num_envs=num_envs, remat_inner=remat)
  problem = MetaProblem(env, rule, agent, opt, meta)
  rule_params = rule.init(jax.random.PRNGKey(0))
  lives = jax.vmap(problem.init_lifetime, in_axes=(0, None))(
      jax.random.split(jax.random.PRNGKey(1), agents), make_hypers(lr))
  step = jax.jit(lambda rp, l, key: population_meta_grad(
      problem, rp, l, jax.random.split(key, agents), chunk=chunk))
  t = time.perf_counter()
  compiled = step.lower(rule_params, lives, jax.random.PRNGKey(2)).compile()
  compile_s = time.perf_counter() - t
  out = compiled(rule_params, lives, jax.random.PRNGKey(2))
  jax.block_until_ready(out)
  lives = out[2]
  t = time.perf_counter()
  for i in range(repeats):
    out = compiled(rule_params, lives, jax.random.PRNGKey(3 + i))
    lives = out[2]
  jax.block_until_ready(out)
  per = (time.perf_counter() - t) / repeats
  steps = agents * meta.agent_steps_per_update
  return {"env": env_name, "agent": agent.kind, "agents": agents, "envs/agent": num_envs,
          "T": rollout, "K": k, "lstm": hidden, "chunk": chunk or agents, "remat": remat,
          "compile_s": round(compile_s, 1),
          "s/meta-update": round(per, 3), "agent-steps/s": round(steps / per),
          "peak_rss_GiB": round(peak_rss_gib(), 2)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--envs", default="tabular/dense,random/dense")
  p.add_argument("--agents", type=int, default=8)
  p.add_argument("--num-envs", type=int, default=64)
  p.add_argument("--rollout", type=int, default=20)
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--chunk", type=int, default=0, help="lifetimes per gradient chunk (0: all)")
  p.add_argument("--remat", action="store_true", help="rematerialise the inner updates")
  a = p.parse_args()
  rows = [measure(e, a.agents, a.num_envs, a.rollout, a.k, a.hidden, a.repeats, a.chunk, a.remat)
          for e in a.envs.split(",")]
  print(f"devices: {jax.devices()}")
  print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
  main()
