"""``lpg-report``: a rule against baselines over a suite of environments.

::

  lpg-report --rule R --suite train|minatar|<comma list> --algos lpg,a2c[,random][,mgrl]
             --steps N --seeds S --out DIR [--resume] [--overwrite]

Runs every (env, algo) with ``meta_test.apply`` into ``DIR/runs/<env>/<algo>/``
(with ``--resume`` a run whose ``summary.json`` exists is skipped), then writes
``DIR/report.csv``, ``DIR/report.md`` (one row per (env, algo)),
``DIR/scores.png`` (bar chart) and ``DIR/curves.png`` (learning-curve grid).

Columns: ``final_return_mean/std``, ``normalised_score`` (``(R - R_random) /
(R_opt - R_random)`` where ``envs.returns`` knows the optimum), ``ratio_to_a2c``
(``R / R_a2c``, when ``|R_a2c| > 0``) and, when a random row exists,
``a2c_relative`` (``(R - R_random) / (R_a2c - R_random)``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from meta_test import apply as apply_lib
import envs  # noqa: E402
from lpg.artifact import load_rule  # noqa: E402
from meta_test.host import MissingExtraError  # noqa: E402

SUITE_ALIASES = {"train": "all"}
COLUMNS = ["env", "algo", "final_return_mean", "final_return_std", "normalised_score",
           "ratio_to_a2c", "a2c_relative", "seeds", "steps", "steps_per_s", "wall_time_s"]


def resolve_suite(suite: str) -> list[str]:
  """``train`` (the 15 meta-training envs), ``minatar``, any ``envs.SUITES`` name,
  or a comma-separated list of env names (each checked with ``envs.make``)."""
  name = SUITE_ALIASES.get(suite, suite)
  if name in envs.SUITES:
    return list(envs.SUITES[name])
  names = [n.strip() for n in suite.split(",") if n.strip()]
  if not names:
    raise apply_lib.UsageError("--suite is empty")
  for n in names:
    if not (n.startswith("atari/") or ":" in n):
      envs.make(n)  # ValueError with a close-match suggestion
  return names


def run_dir(out: str, env: str, algo: str) -> str:
  return os.path.join(out, "runs", apply_lib.env_slug(env), algo)


def load_summaries(out: str) -> list[dict]:
  """Every ``summary.json`` under ``out/runs`` (with the run's directory as ``dir``)."""
  found = []
  root = os.path.join(out, "runs")
  for dirpath, _, files in sorted(os.walk(root)):
    if "summary.json" in files:
      with open(os.path.join(dirpath, "summary.json")) as f:
        s = json.load(f)
      s["dir"] = dirpath
      found.append(s)
  return found


def build_table(summaries: list[dict]):
  """One row per (env, algo): a pandas DataFrame with ``COLUMNS``."""
  import pandas as pd
  rows = [{k: s.get(k) for k in COLUMNS if k in s} for s in summaries]
  df = pd.DataFrame(rows, columns=COLUMNS)
  df = df.drop_duplicates(["env", "algo"], keep="last")
  for col in ("final_return_mean", "final_return_std", "normalised_score"):
    df[col] = pd.to_numeric(df[col], errors="coerce")
  by = {(r.env, r.algo): r.final_return_mean for r in df.itertuples()}
  ratio, rel = [], []
  for r in df.itertuples():
    a2c = by.get((r.env, "a2c"), float("nan"))
    rnd = by.get((r.env, "random"), float("nan"))
    ratio.append(r.final_return_mean / a2c if np.isfinite(a2c) and abs(a2c) > 1e-8 else np.nan)
    denom = a2c - rnd
    rel.append((r.final_return_mean - rnd) / denom
               if np.isfinite(denom) and abs(denom) > 1e-8 else np.nan)
  df["ratio_to_a2c"] = ratio
  df["a2c_relative"] = rel
  return df.sort_values(["env", "algo"]).reset_index(drop=True)


def to_markdown(df, floatfmt: str = "{:.3g}") -> str:
  """A GitHub Markdown table (no ``tabulate`` needed)."""
  def fmt(v):
    if isinstance(v, float):
      return "" if math.isnan(v) else floatfmt.format(v)
    return str(v)
  head = "| " + " | ".join(df.columns) + " |"
  sep = "|" + "|".join("---" for _ in df.columns) + "|"
  body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
  return "\n".join([head, sep] + body) + "\n"


def plot_scores(df, path: str) -> None:
  """Grouped bars per env: normalised score where every row has one, else final return."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  use_norm = df["normalised_score"].notna().all() and len(df)
  col = "normalised_score" if use_norm else "final_return_mean"
  env_names = list(dict.fromkeys(df["env"]))
  algos = list(dict.fromkeys(df["algo"]))
  width = 0.8 / max(len(algos), 1)
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(env_names) + 2), 4))
  x = np.arange(len(env_names))
  for i, algo in enumerate(algos):
    sub = df[df["algo"] == algo].set_index("env")
    vals = [sub[col].get(e, np.nan) for e in env_names]
    errs = [sub["final_return_std"].get(e, np.nan) if not use_norm else 0 for e in env_names]
    ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=errs, label=algo)
  ax.set_xticks(x, env_names, rotation=30, ha="right")
  ax.set_ylabel(col.replace("_", " "))
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_curves(summaries: list[dict], path: str) -> None:
  """One subplot per env, one line (mean, min..max shading) per algo."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd
  env_names = sorted({s["env"] for s in summaries})
  n = max(len(env_names), 1)
  cols = min(4, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, env in zip(axes.flat, env_names):
    for s in sorted((s for s in summaries if s["env"] == env), key=lambda s: s["algo"]):
      csv = os.path.join(s["dir"], "curves.csv")
      if os.path.exists(csv):
        apply_lib.plot_curve_on(ax, pd.read_csv(csv), label=s["algo"])
    ax.set_title(env)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_report(out: str):
  """Collects ``out/runs/*/*/summary.json`` into the table files and plots; returns the table."""
  summaries = load_summaries(out)
  df = build_table(summaries)
  df.to_csv(os.path.join(out, "report.csv"), index=False)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(to_markdown(df))
  if len(df):
    plot_scores(df, os.path.join(out, "scores.png"))
    plot_curves(summaries, os.path.join(out, "curves.png"))
  return df


def build_parser() -> argparse.ArgumentParser:
  p = apply_lib._Parser(prog="lpg-report", description=__doc__.split("\n\n")[0])
  p.add_argument("--rule", help="rule artifact (.pkl); needed when --algos has lpg")
  p.add_argument("--suite", default="train",
                 help="train (15 meta-training envs), minatar, another envs.SUITES name, "
                      "or a comma-separated list of env names")
  p.add_argument("--algos", default="lpg,a2c", help="comma list of lpg, a2c, random, mgrl")
  p.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed per run")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--resume", action="store_true", help="skip runs whose summary.json exists")
  p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
  p.add_argument("--agent", default=None, help="force an agent kind for every env")
  p.add_argument("--num-envs", type=int, default=None)
  p.add_argument("--rollout-len", type=int, default=None)
  p.add_argument("--quiet", action="store_true")
  return p


def make_plans(args) -> list[tuple[str, str, object]]:
  """Validates the command line; returns ``(env, algo, plan or None if done)`` per run."""
  if args.steps is None or args.steps < 1:
    raise apply_lib.UsageError(f"--steps must be a positive integer, got {args.steps}")
  if args.seeds is None or args.seeds < 1:
    raise apply_lib.UsageError(f"--seeds must be a positive integer, got {args.seeds}")
  algos = [a.strip() for a in args.algos.split(",") if a.strip()]
  bad = [a for a in algos if a not in apply_lib.ALGOS]
  if bad or not algos:
    raise apply_lib.UsageError(f"--algos must be a comma list of {', '.join(apply_lib.ALGOS)}, "
                               f"got {args.algos!r}")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise apply_lib.UsageError(f"--out {args.out} is an existing file, expected a directory")
  if (os.path.isdir(args.out) and os.listdir(args.out) and not args.resume
      and not args.overwrite):
    raise apply_lib.UsageError(f"--out {args.out} is not empty; pass --resume to continue it "
                               "or --overwrite to redo it")
  if "lpg" in algos and not args.rule:
    raise apply_lib.UsageError("--algos has lpg: pass --rule PATH (a rule artifact .pkl)")
  loaded = load_rule(args.rule) if args.rule else None
  names = resolve_suite(args.suite)
  plans = []
  for env in names:
    for algo in algos:
      d = run_dir(args.out, env, algo)
      if args.resume and os.path.exists(os.path.join(d, "summary.json")):
        plans.append((env, algo, None))
        continue
      plans.append((env, algo, apply_lib.make_plan(
          env, algo, args.steps, args.seeds, d, rule_path=args.rule, agent=args.agent,
          overwrite=True, loaded_rule=loaded, num_envs=args.num_envs,
          rollout_len=args.rollout_len)))
  return plans


def main(argv=None) -> int:
  """Entry point of ``lpg-report``; returns the exit status."""
  prog = "lpg-report"
  try:
    args = build_parser().parse_args(argv)
    plans = make_plans(args)
  except (ValueError, MissingExtraError) as e:
    print(f"{prog}: error: {apply_lib.one_line(e)}", file=sys.stderr)
    return 2
  for i, (env, algo, plan) in enumerate(plans):
    if plan is None:
      print(f"[{i + 1}/{len(plans)}] {env} {algo}: done already, skipped", file=sys.stderr)
      continue
    s = apply_lib.execute(plan, progress=not args.quiet)
    print(f"[{i + 1}/{len(plans)}] {env} {algo}: final return {s['final_return_mean']}",
          file=sys.stderr)
  df = write_report(args.out)
  print(to_markdown(df))
  return 0


if __name__ == "__main__":
  sys.exit(main())
