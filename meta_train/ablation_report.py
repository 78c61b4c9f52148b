"""``lpg-ablation report``: the ablation's table and validation curves from its runs.

Reads ``OUT/<variant>-s<seed>/metrics.jsonl`` (``meta_train.ablation``).  Per run, the
validation lines give each held-out task's score and the run's mean score
(``validation_score``) at each validation; *first* is the score at the run's first
validation, *last* the score at its last
validation, *end* the mean of its last ``END`` validations (less noisy than one), *best* its
highest, *drop* = best - last of the mean score; *end - base* is the end mean score minus
that of ``base`` (today's recipe) at the same seed.  Over the seeds
of a variant the table gives ``mean ± sd`` (sample standard deviation, ddof 1; a single
seed shows the mean alone).  A variant *falls* when its mean drop exceeds ``FALL_TOL``
(issue 16's target: the winner's validation score does not fall as meta-training
continues).  ``agent-steps`` and ``wall s`` are what the runs used (means over seeds; ES
counts full-length lifetimes, an upper bound with random lengths).  The figure has one
panel per task and one for the mean score: per variant the mean over seeds of the k-th
validation against its mean wall time, shaded ± sd.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from meta_train.ablation import PROG, RUN_NAME, VARIANTS
from meta_train.plots import read_metrics

END = 3           # validations averaged into a run's *end* score
FALL_TOL = 0.02   # mean drop (best - last) of the mean score that counts as falling
MEAN = "mean"     # the task name of the run's mean validation score
BASE = "base"     # today's recipe, the reference of the ``last - base`` column


def read_runs(out: str):
  """``(validations, totals)`` data frames of the runs in ``out``.

  validations: one row per run, validation ``k`` and task (``MEAN`` included): variant,
  seed, k, meta_update, agent_steps, wall_time_s, task, score.  totals: one row per run:
  variant, seed, meta_updates, agent_steps, wall_time_s (the largest logged).
  """
  import pandas as pd
  rows, totals = [], []
  for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
    match, path = RUN_NAME.match(name), os.path.join(out, name, "metrics.jsonl")
    if not match or not os.path.isfile(path):
      continue
    run = {"variant": match["variant"], "seed": int(match["seed"])}
    lines = read_metrics(path)
    totals.append(dict(run, meta_updates=max(l["meta_update"] for l in lines),
                       agent_steps=max(l.get("agent_steps", 0) for l in lines),
                       wall_time_s=max(l.get("wall_time_s", 0.0) for l in lines)))
    for k, line in enumerate(l for l in lines if "validation" in l):
      at = dict(run, k=k, meta_update=line["meta_update"], agent_steps=line["agent_steps"],
                wall_time_s=line["wall_time_s"])
      scores = {task: v["score"] for task, v in line["validation"].items()}
      for task, score in {**scores, MEAN: line["validation_score"]}.items():
        rows.append(dict(at, task=task, score=np.nan if score is None else float(score)))
  return pd.DataFrame(rows), pd.DataFrame(totals)


def per_run(validations):
  """One row per (variant, seed, task): ``first``, ``last``, ``end``, ``best``, ``drop``."""
  g = validations.sort_values("k").groupby(["variant", "seed", "task"], sort=False)["score"]
  frame = g.agg(first="first", last="last", end=lambda s: s.tail(END).mean(),
                best="max").reset_index()
  frame["drop"] = frame["best"] - frame["last"]
  return frame


def spread(values) -> str:
  """``mean ± sd`` (ddof 1) of the finite values; the mean alone for one."""
  v = np.asarray([x for x in values if np.isfinite(x)], float)
  if not v.size:
    return "-"
  return f"{v.mean():.3f}" if v.size == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def markdown(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def versus_base(mean_runs, variant: str) -> str:
  """``variant``'s end mean score minus ``BASE``'s, paired by seed (a seed fixes the
  validation keys, so both rules meet the same agents and noise): mean ± sd."""
  paired = mean_runs[mean_runs.variant == variant].merge(
      mean_runs[mean_runs.variant == BASE], on="seed", suffixes=("", "_base"))
  return spread(paired["end"] - paired["end_base"]) if variant != BASE else "-"


def summary_table(runs, totals, variants: list[str]) -> str:
  """Per variant: seeds, mean score first / last / end / best / drop, falls, agent-steps,
  wall s, meta-updates."""
  rows = []
  mean_runs = runs[runs.task == MEAN]
  for v in variants:
    m = mean_runs[mean_runs.variant == v]
    t = totals[totals.variant == v]
    falls = "yes" if np.nanmean(m["drop"]) > FALL_TOL else "no"
    rows.append([v, len(t), spread(m["first"]), spread(m["last"]), spread(m["end"]), versus_base(mean_runs, v),
                 spread(m["best"]),
                 spread(m["drop"]), falls, f"{t.agent_steps.mean():,.0f}",
                 f"{t.wall_time_s.mean():.0f}", f"{t.meta_updates.mean():.0f}"])
  return markdown(["variant", "seeds", "score (first)", "score (last)", f"score (end, last {END})",
                   f"end - {BASE}", "score (best)",
                   "drop best-last", "falls", "agent-steps", "wall s", "meta-updates"], rows)


def task_table(runs, variants: list[str], tasks: list[str], which: str) -> str:
  """Per variant the ``which`` (last / best) score of each held-out task."""
  rows = [[v] + [spread(runs[(runs.variant == v) & (runs.task == task)][which])
                 for task in tasks] for v in variants]
  return markdown(["variant"] + tasks, rows)


def tables(validations, totals) -> str:
  runs = per_run(validations)
  order = {v: i for i, v in enumerate(VARIANTS)}
  variants = sorted(dict.fromkeys(totals.variant), key=lambda v: (order.get(v, len(order)), v))
  tasks = [t for t in dict.fromkeys(validations.task) if t != MEAN]
  return "\n\n".join([
      f"Validation scores, mean ± sd over seeds (falls: mean drop > {FALL_TOL}).",
      summary_table(runs, totals, variants),
      "Held-out tasks at the last validation:", task_table(runs, variants, tasks, "last"),
      "Held-out tasks at their best validation:", task_table(runs, variants, tasks, "best")])


def plot_curves(validations, path: str) -> None:
  """One panel per task (the mean first): mean over seeds vs wall time, shaded ± sd, up to
  the last validation index every seed of the variant reached (a point of fewer seeds would
  mix seeds whose validation levels differ)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  tasks = [MEAN] + [t for t in dict.fromkeys(validations.task) if t != MEAN]
  cols = min(3, len(tasks))
  rows = -(-len(tasks) // cols)
  fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
  FigureCanvasAgg(fig)
  for i, task in enumerate(tasks):
    ax = fig.add_subplot(rows, cols, i + 1)
    d = validations[validations.task == task]
    for v, dv in d.groupby("variant", sort=False):
      g = dv.groupby("k").agg(x=("wall_time_s", "mean"), y=("score", "mean"),
                              sd=("score", "std"), n=("seed", "nunique")).fillna({"sd": 0.0})
      g = g[g.n == dv.seed.nunique()]
      line, = ax.plot(g.x, g.y, marker=".", label=v)
      ax.fill_between(g.x, g.y - g.sd, g.y + g.sd, color=line.get_color(), alpha=0.2)
    ax.set_title("mean validation score" if task == MEAN else task, fontsize=9)
    ax.set_xlabel("wall s")
    ax.set_ylabel("score")
  fig.axes[0].legend(fontsize=7)
  fig.savefig(path, dpi=110)


def report_command(args) -> int:
  from lpg.cli import UserError
  validations, totals = read_runs(args.out)
  if validations.empty:
    raise UserError(f"--out {args.out} holds no run with a validation (OUT/<variant>-s<seed>/"
                    "metrics.jsonl); run `lpg-ablation run` first")
  text = tables(validations, totals)
  for path in (args.md, args.png):
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if args.md:
    with open(args.md, "w") as f:
      f.write(text + "\n")
  if args.png:
    plot_curves(validations, args.png)
  print(text)
  if args.md or args.png:
    print(f"{PROG}: wrote {', '.join(p for p in (args.md, args.png) if p)}", file=sys.stderr)
  return 0
