"""Running a ``meta_test.plan.RunPlan``: compiled (registered envs) or the host loop."""
from __future__ import annotations

import dataclasses
import sys
import time

import jax

from meta_test import host as host_lib
from meta_test.algos import ALGOS
from meta_test.plan import RunPlan
from meta_test.results import write_run
from meta_test.train import RunResult, run_seeds

PROGRESS_CHUNKS = 20   # compiled runs report progress (and time steps/s) in this many chunks


def train_plan(plan: RunPlan, progress: bool = True) -> RunResult:
  """Trains ``plan.seeds`` agents and returns their metrics ``[S, U]``."""
  total = plan.num_updates * (plan.seeds if plan.source.host else 1)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=f"{plan.source.name} {plan.choice.algo}", unit="upd",
               leave=False, file=sys.stderr)
  try:
    seeds = [plan.seed + i for i in range(plan.seeds)]
    if plan.source.host:
      return host_lib.host_train(lambda s: plan.source.make_vec(s, plan.run.num_envs), plan.run,
                                 plan.choice.rule, plan.choice.params, seeds,
                                 progress=bar.update if bar else None)
    chunk = max(1, -(-plan.num_updates // PROGRESS_CHUNKS))
    config = dataclasses.replace(plan.run, chunk=chunk)
    fns = ALGOS[plan.choice.algo].train(plan.source.env, config, plan.choice)
    keys = jax.random.split(jax.random.PRNGKey(plan.seed), plan.seeds)
    return run_seeds(fns, keys, progress=bar.update if bar else None)
  finally:
    if bar is not None:
      bar.close()


def execute(plan: RunPlan, progress: bool = True) -> dict:
  """Trains, then writes ``summary.json``, ``curves.csv`` and ``curve.png`` into ``plan.out``;
  returns the summary."""
  t0 = time.perf_counter()
  result = train_plan(plan, progress=progress)
  return write_run(plan, result, time.perf_counter() - t0)
