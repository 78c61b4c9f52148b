"""Agent-steps/s: ES's forward-only lifetimes vs the meta-gradient step, same population.

Both rows use the same world, rule, agent and rollout sizes and the same number
of lifetimes P; they run in one process with their calls interleaved, so the
load of a shared machine hits both alike (median and best of ``--reps``); memory
is XLA's temporary buffer size of each compiled step:

* ``meta-gradient``: ``lpg.meta_objective.population_meta_grad`` of P lifetimes,
  K inner updates then the A2C meta-objective; (K+1) T B steps per lifetime.
* ``es``: one ``meta_train.es`` generation of P members, each one forward-only
  lifetime of U updates (``lpg.lifetime``); U T B steps per member.

    python benchmarks/es_throughput.py                 # CPU preset sizes, P = 16
    python benchmarks/es_throughput.py --population 64 --hidden 256 --num-envs 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def build(args) -> dict:
  """``{row: (jitted fn, args, agent-steps per call)}`` for both rows."""
  import jax
  import jax.numpy as jnp
  import envs
  from lpg.lifetime import LifetimeConfig, World, make_lifetime, mean_fitness
  from lpg.meta_objective import MetaConfig, MetaProblem, population_meta_grad
  from lpg.networks import AgentConfig
  from lpg.rule import LPGConfig, LPGRule, make_hypers
  from lpg.update import OptimizerConfig
  from meta_train import es

  env = envs.make(args.env)
  rule = LPGRule(LPGConfig(hidden=args.hidden, y_dim=args.y_dim))
  rp = rule.init(jax.random.PRNGKey(0))
  P, T, B = args.population, args.rollout_len, args.num_envs
  hypers = make_hypers(40.0)
  agent, opt = AgentConfig("tabular"), OptimizerConfig("sgd")
  keys = jax.random.split(jax.random.PRNGKey(2), P)
  problem = MetaProblem(env, rule, agent, opt, MetaConfig(num_inner=args.k, rollout_len=T,
                                                          num_envs=B))
  batch = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (P,)), hypers)
  lives = jax.vmap(problem.init_lifetime)(jax.random.split(jax.random.PRNGKey(1), P), batch)
  mg = jax.jit(lambda lv: population_meta_grad(problem, rp, lv, keys)[1])
  life = make_lifetime(env, rule, agent, opt, LifetimeConfig(args.lifetime, T, B),
                       diagnostics=False)
  world = World(life, hypers, None)
  cfg = es.ESConfig(population=P)
  state, unravel = es.init(rp, cfg, jax.random.PRNGKey(1))
  gen = jax.jit(lambda s: es.make_generation(lambda p, k: mean_fitness([world], p, k), unravel,
                                             cfg)(s)[0])
  return {"meta-gradient": (mg, lives, P * (args.k + 1) * T * B),
          "es": (gen, state, P * args.lifetime * T * B)}


def measure(args) -> list[dict]:
  """Both rows in one process, calls interleaved (a shared machine's load hits both alike)."""
  import jax
  rows = build(args)
  out = {}
  for name, (fn, x, steps) in rows.items():
    t = time.perf_counter()
    compiled = fn.lower(x).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(x))
    out[name] = {"row": name, "population": args.population, "agent_steps_per_call": steps,
                 "compile_first_s": round(time.perf_counter() - t, 2),
                 "temp_mib": round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 1),
                 "rates": [], "fn": compiled, "x": x}
  for _ in range(args.reps):
    for name, r in out.items():
      t = time.perf_counter()
      jax.block_until_ready(r["fn"](r["x"]))
      r["rates"].append(r["agent_steps_per_call"] / (time.perf_counter() - t))
  result = []
  for r in out.values():
    rates = sorted(r.pop("rates"))
    r.pop("fn"), r.pop("x")
    r.update(agent_steps_per_s_median=round(rates[len(rates) // 2]), agent_steps_per_s_best=round(
        rates[-1]), device=jax.devices()[0].platform)
    result.append(r)
  return result


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--env", default="tabular/dense")
  p.add_argument("--population", type=int, default=16)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--y-dim", type=int, default=30)
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--lifetime", type=int, default=50, help="ES lifetime's updates U")
  p.add_argument("--rollout-len", type=int, default=20)
  p.add_argument("--num-envs", type=int, default=32)
  p.add_argument("--reps", type=int, default=5)
  args = p.parse_args()
  rows = measure(args)
  for r in rows:
    print(json.dumps(r), flush=True)
  mg, es_row = rows
  ratio = {k: round(es_row[k] / mg[k], 2)
           for k in ("agent_steps_per_s_median", "agent_steps_per_s_best")}
  print(json.dumps({"es_over_meta_gradient": ratio, "target": 2.5}))


if __name__ == "__main__":
  main()
