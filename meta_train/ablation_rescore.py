"""``lpg-ablation rescore``: every run's rule scored again on one common validation.

A run validates with keys drawn from its own seed, so the two seeds of a variant meet
different procedural levels, agents and noise, and their absolute scores differ more than
the variants do (``artifacts/ablations/README.md``).  Rescoring puts each run's
``rule_best.pkl`` (``--which best``; ``last``: ``rule.pkl``; ``both``) on **one**
validation: the run's own tasks, inner-learning-rate grid and lifetime length, but keys from
``--seed`` (default ``SEED``, none of the runs' own) and ``--validate-seeds`` lifetimes per
grid point (default 4, twice the runs').  Rules then differ only by their meta-training; the
table gives, per variant, ``mean ± sd`` over its seeds and the margin over ``base`` paired by
seed.  One compiled validation serves every run whose rule and validation settings agree.

    lpg-ablation rescore --out runs/ablation [--seed 1000] [--validate-seeds 4]
        [--which best|last|both] [--md table.md] [--json scores.json]
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from types import SimpleNamespace

import numpy as np

from meta_train.ablation import PROG, RUN_NAME
from meta_train.ablation_report import BASE, markdown, spread

SEED = 1000
FILES = {"best": "rule_best.pkl", "last": "rule.pkl"}


def runs_in(out: str) -> list[tuple[str, int, str]]:
  """``(variant, seed, run dir)`` of every run in ``out`` that has a record."""
  found = []
  for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
    m = RUN_NAME.match(name)
    if m and os.path.isfile(os.path.join(out, name, "config.json")):
      found.append((m["variant"], int(m["seed"]), os.path.join(out, name)))
  return found


def _config(run: str, validate_seeds: int):
  from meta_train.config import TrainConfig
  with open(os.path.join(run, "config.json")) as f:
    config = TrainConfig.from_dict(json.load(f)["config"])
  return dataclasses.replace(config, validate_seeds=validate_seeds)


def _validator(config, run: str, seed: int, cache: dict):
  """The compiled validation of ``config``'s settings (shared through ``cache``)."""
  from lpg.rule import LPGRule
  from meta_train import validation
  key = repr((config.rule, config.validate_envs, config.validate_updates, config.validate_seeds,
              config.meta, config.mlp_hidden, config.tabular_lrs, config.network_lrs,
              config.alpha_ys, config.rule_gamma, seed))
  if key not in cache:
    names = tuple(config.validate_envs)
    setup = SimpleNamespace(config=config, rule=LPGRule(config.rule))
    cache[key] = validation.Validator(names, tuple(validation.kind_of(n) for n in names),
                                      validation.baselines(names, run),
                                      validation.make_scores(setup, names, seed))
  return cache[key]


def rescore(out: str, seed: int = SEED, validate_seeds: int = 4,
            which: tuple[str, ...] = ("best",)) -> list[dict]:
  """One row per (run, rule): variant, seed, rule, score (the mean), tasks {task: score}."""
  from lpg.artifact import load_rule
  from meta_train import validation
  rows, cache = [], {}
  for variant, run_seed, run in runs_in(out):
    config = _config(run, validate_seeds)
    for w in which:
      path = os.path.join(run, FILES[w])
      if not os.path.isfile(path):
        print(f"{PROG}: {path} missing: skipped", file=sys.stderr)
        continue
      result = validation.validate(_validator(config, run, seed, cache), config,
                                   load_rule(path).params)
      rows.append({"variant": variant, "seed": run_seed, "rule": w,
                   "score": result["validation_score"],
                   "tasks": {t: v["score"] for t, v in result["validation"].items()}})
      print(f"{PROG}: {variant}-s{run_seed} {w}: {result['validation_score']:.3f}",
            file=sys.stderr)
  return rows


def table(rows: list[dict]) -> str:
  """Markdown: per (variant, rule) the mean score ± sd over seeds, the paired margin over
  ``base``, and each task's mean."""
  tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
  base = {(r["seed"], r["rule"]): r["score"] for r in rows if r["variant"] == BASE}
  body = []
  for variant, rule in dict.fromkeys((r["variant"], r["rule"]) for r in rows):
    mine = [r for r in rows if (r["variant"], r["rule"]) == (variant, rule)]
    paired = [r["score"] - base[(r["seed"], rule)] for r in mine if (r["seed"], rule) in base]
    body.append([variant, rule, len(mine), spread([r["score"] for r in mine]),
                 "-" if variant == BASE or not paired else spread(paired),
                 " / ".join(f"{r['score']:.3f}" for r in sorted(mine, key=lambda r: r["seed"]))]
                + [spread([r["tasks"].get(t, np.nan) for r in mine]) for t in tasks])
  return markdown(["variant", "rule", "seeds", "score", "score - base (paired)", "per seed"]
                  + tasks, body)


def rescore_command(args) -> int:
  from lpg.cli import UserError
  if not runs_in(args.out):
    raise UserError(f"--out {args.out} holds no run (OUT/<variant>-s<seed>/config.json); run "
                    "`lpg-ablation run` first")
  which = ("best", "last") if args.which == "both" else (args.which,)
  rows = rescore(args.out, args.seed, args.validate_seeds, which)
  text = (f"Rescored on one validation: seed {args.seed}, {args.validate_seeds} lifetimes per "
          f"grid point.\n\n" + table(rows))
  for path, data in ((args.md, text + "\n"), (args.json, json.dumps(rows, indent=1))):
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with open(path, "w") as f:
        f.write(data)
  print(text)
  return 0
