"""Throughput and memory of the meta-training job, per preset and at the reference config.

Each row runs in its own process (so peak RSS is that row's) and measures the
compiled meta-update of ``meta_train.trainer`` exactly as ``lpg-meta-train``
runs it: compile time, seconds per meta-update, agent environment-steps per
second ((K+1) x envs x rollout x lifetimes per meta-update) and peak RSS (and
peak accelerator memory where there is one).

Rows:
  smoke, cpu, gpu      the presets (all 15 envs for cpu/gpu)
  repro-8              the open reproduction's measured config: 8 lifetimes x 64 envs x
                       20 steps, K=5, LSTM-256, tabular agents (tabular/dense)
  repro-512            the same with 512 lifetimes (chunks of 16, rematerialised inner updates)
  devices-N            (with --devices) the smoke preset with 16 lifetimes on N simulated CPU devices;
                       ``speedup`` is relative to the first devices row of the same run
  es-ROW               evolution strategies (``--meta-optimizer es``) at ROW's population: as many
                       forward-only lifetimes per generation (members x worlds) as ROW has lifetimes,
                       the same rule and batch, whole lifetimes of 50 updates; ``vs_gradient`` is the
                       agent-steps/s ratio to ROW measured in the same run

A ratio is printed only against a figure measured in the same run: to compare
with another program (the open reproduction, say), run both side by side on the
same machine.

    python benchmarks/meta_train.py                      # smoke, cpu, repro-8, repro-512
    python benchmarks/meta_train.py --rows gpu           # on an accelerator
    python benchmarks/meta_train.py --devices 1,2,4      # scale-out on simulated CPU devices
    python benchmarks/meta_train.py --rows smoke,es-smoke,repro-8,es-repro-8   # ES next to the gradient
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

ES_LIFETIME = 50  # agent updates of one ES lifetime in the es-* rows


def row_config(name: str):
  from lpg.meta_objective import MetaConfig
  from lpg.rule import LPGConfig
  from meta_train.config import PRESETS
  import envs
  if name in PRESETS:
    c = PRESETS[name]
    names = []
    for e in c.envs:
      names.extend(envs.SUITES.get(e, (e,)))
    return dataclasses.replace(c, envs=tuple(names))
  repro = dict(envs=("tabular/dense",), rule=LPGConfig(hidden=256, y_dim=30),
               meta=MetaConfig(num_inner=5, rollout_len=20, num_envs=64), lifetime_updates=2500)
  if name == "repro-8":
    return dataclasses.replace(PRESETS["smoke"], agents_per_env=8, **repro)
  if name == "repro-512":
    meta = dataclasses.replace(repro["meta"], remat_inner=True)
    return dataclasses.replace(PRESETS["smoke"], agents_per_env=512, agent_chunk=16,
                               **dict(repro, meta=meta))
  if name.startswith("es-"):
    base = row_config(name[3:])
    return dataclasses.replace(base, meta_optimizer="es", es_population=base.agents_per_env,
                               es_seeds=1, lifetime_updates=ES_LIFETIME, lifetime_updates_min=0,
                               validate_every=0)
  if name.startswith("devices-"):
    # Fixed total population (2 worlds x 8 lifetimes) split over N devices.
    return dataclasses.replace(PRESETS["smoke"], agents_per_env=8)
  raise SystemExit(f"unknown row {name!r}")


def measure(name: str, updates: int) -> dict:
  import envs  # noqa: F401  (applies the XLA CPU guard before jax)
  import jax
  from meta_train.job import build
  config = row_config(name)
  devices = jax.devices()
  mt = build(config, devices)[0]     # the job's own choice of meta-optimizer
  state = mt.init(config.seed)
  jax.block_until_ready(state)
  t = time.perf_counter()
  compiled = mt.run.lower(state, 1).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(updates):
    state, m = compiled(state)
  jax.block_until_ready(m)
  per = (time.perf_counter() - t) / updates
  row = {"row": name, "devices": f"{len(devices)} {devices[0].platform}",
         "lifetimes": config.population, "envs": len(config.envs),
         "envs/agent": config.meta.num_envs, "T": config.meta.rollout_len,
         "K": "es" if config.meta_optimizer == "es" else config.meta.num_inner,
         "lstm": config.rule.hidden,
         "compile_s": round(compile_s, 1), "s/update": round(per, 3),
         "agent-steps/s": round(config.agent_steps_per_update / per),
         "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
  stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    row["peak_device_GiB"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default="smoke,cpu,repro-8,repro-512")
  p.add_argument("--devices", default=None, help="comma list of simulated CPU device counts")
  p.add_argument("--updates", type=int, default=3, help="timed meta-updates per row")
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.one:
    print("ROW " + json.dumps(measure(a.one, a.updates)), flush=True)
    return
  rows = [(r, None) for r in a.rows.split(",") if r] if not a.devices else [
      (f"devices-{n}", int(n)) for n in a.devices.split(",")]
  results = []
  for name, n_dev in rows:
    env = dict(os.environ)
    if n_dev:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={n_dev}").strip()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name,
                          "--updates", str(a.updates)], env=env, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
    if out.returncode or not line:
      print(f"row {name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
      continue
    results.append(json.loads(line[0][4:]))
    if n_dev:  # scale-out relative to the first devices row measured in this run
      first = next(r for r in results if r["row"].startswith("devices-"))
      results[-1]["speedup"] = f"{results[-1]['agent-steps/s'] / first['agent-steps/s']:.2f}x"
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  by_name = {r["row"]: r for r in results}
  for r in results:   # ES against the gradient row of the same population, measured in this run
    base = by_name.get(r["row"][3:]) if r["row"].startswith("es-") else None
    if base:
      r["vs_gradient"] = f"{r['agent-steps/s'] / base['agent-steps/s']:.2f}x"
  import pandas as pd
  print(pd.DataFrame(results).to_string(index=False))


if __name__ == "__main__":
  main()
