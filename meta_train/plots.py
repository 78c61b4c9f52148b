"""Meta-training curves from ``metrics.jsonl`` (plain or gzip-compressed).

    python -m meta_train.plots RUN_DIR [OUT.png] [--x agent_steps]
        # training and held-out validation scores, one panel per task
        # (default OUT: RUN_DIR/curves.png; x: meta_update)
    python -m meta_train.plots runs/cpu/metrics.jsonl curve.png   # the population's mean
"""
from __future__ import annotations

import gzip
import json
import sys


def read_metrics(path: str) -> list[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    return [json.loads(line) for line in f if line.strip()]


def metrics_frame(path: str):
  """One row per logging interval and env: meta_update, env, normalised_return, episode_return."""
  import pandas as pd
  rows = []
  for line in read_metrics(path):
    for env, m in line.get("envs", {}).items():
      rows.append({"meta_update": line["meta_update"], "env": env,
                   "episode_return": m["episode_return"],
                   "normalised_return": m["normalised_return"],
                   "meta_loss": line["meta_loss"]})
  return pd.DataFrame(rows)


def _finish(fig, ax, out_png: str) -> None:
  """Legend, grid, layout; writes and closes the figure."""
  import matplotlib.pyplot as plt
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def plot_meta_training(path: str, out_png: str, smooth: int = 5) -> None:
  """Mean normalised return of the population vs meta-update, overall and per env family.

  Uses the caller's matplotlib backend (the command line below picks Agg).
  """
  import matplotlib.pyplot as plt
  df = metrics_frame(path)
  df = df[df.normalised_return.notna()]
  df["family"] = df.env.str.split("/").str[0]
  fig, ax = plt.subplots(figsize=(7, 4))
  overall = df.groupby("meta_update").normalised_return.mean().rolling(smooth, min_periods=1).mean()
  ax.plot(overall.index, overall.values, color="black", lw=2, label="mean (envs with a known optimum)")
  for family, g in df.groupby("family"):
    curve = g.groupby("meta_update").normalised_return.mean().rolling(smooth, min_periods=1).mean()
    ax.plot(curve.index, curve.values, lw=1, label=family)
  ax.set_xlabel("meta-update")
  ax.set_ylabel("normalised return of the population's agents")
  ax.set_title("Meta-training progress")
  _finish(fig, ax, out_png)


def plot_es_fitness(path: str, out_png: str) -> None:
  """An ES run's population fitness (mean and best member) vs generation."""
  import matplotlib.pyplot as plt
  lines = [l for l in read_metrics(path) if "fitness_mean" in l]
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label in (("fitness_mean", "mean member"), ("fitness_max", "best member")):
    ax.plot([l["meta_update"] for l in lines], [l[key] for l in lines], lw=1.5, label=label)
  ax.set_xlabel("generation")
  ax.set_ylabel("fitness (normalised return, end of lifetime)")
  ax.set_title("Meta-training progress (ES)")
  _finish(fig, ax, out_png)


def plot_training(path: str, out_png: str) -> None:
  """The run's meta-training curve: the population's return (gradient runs) or the ES
  population's fitness, whichever its metrics hold."""
  if any("fitness_mean" in l for l in read_metrics(path)):
    plot_es_fitness(path, out_png)
  else:
    plot_meta_training(path, out_png)


def score_frame(path: str):
  """One row per logged point and task: meta_update, agent_steps, task, split, score.

  ``split`` is ``train`` (the population's normalised return, raw episode return
  where no reference is known) or ``validation`` (the held-out score).
  """
  import pandas as pd
  rows = []
  for line in read_metrics(path):
    at = {"meta_update": line["meta_update"], "agent_steps": line.get("agent_steps")}
    for env, m in line.get("envs", {}).items():
      score = m["normalised_return"] if m["normalised_return"] is not None else m["episode_return"]
      rows.append({**at, "task": env, "split": "train", "score": score})
    for task, m in (line.get("validation") or {}).items():
      rows.append({**at, "task": task, "split": "validation", "score": m["score"]})
  return pd.DataFrame(rows, columns=["meta_update", "agent_steps", "task", "split", "score"])


def plot_scores(path: str, out_png: str, x: str = "meta_update", smooth: int = 5) -> None:
  """Training and validation scores against ``x``, one panel per task (validation in red)."""
  import matplotlib.pyplot as plt
  df = score_frame(path).dropna(subset=["score"])
  tasks = list(dict.fromkeys(df.task))
  cols = min(4, max(1, len(tasks)))
  rows = -(-len(tasks) // cols) if tasks else 1
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  for ax, task in zip(axes.flat, tasks):
    g = df[df.task == task].sort_values(x)
    split = g.split.iloc[0]
    y = g.score.rolling(smooth, min_periods=1).mean() if split == "train" else g.score
    ax.plot(g[x], y, color="tab:red" if split == "validation" else "tab:blue",
            marker="o" if split == "validation" else None, ms=3, lw=1.2)
    ax.set_title(f"{task} ({'held out' if split == 'validation' else 'training'})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  fig.supxlabel(x.replace("_", "-"), fontsize=9)
  fig.supylabel("normalised score", fontsize=9)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  import os
  x = "meta_update"
  if "--x" in argv:
    i = argv.index("--x")
    x = argv[i + 1] if i + 1 < len(argv) else ""
    del argv[i:i + 2]
  if x not in ("meta_update", "agent_steps") or len(argv) not in (1, 2) or (
      len(argv) == 1 and not os.path.isdir(argv[0])):
    print("usage: python -m meta_train.plots RUN_DIR [OUT.png] [--x meta_update|agent_steps]"
          " | METRICS.jsonl[.gz] OUT.png", file=sys.stderr)
    return 2
  import matplotlib
  matplotlib.use("Agg")  # the entry point picks the backend: files only, no display needed
  if os.path.isdir(argv[0]):
    out = argv[1] if len(argv) == 2 else os.path.join(argv[0], "curves.png")
    plot_scores(os.path.join(argv[0], "metrics.jsonl"), out, x)
    print(f"wrote {out}", file=sys.stderr)
  else:
    plot_training(argv[0], argv[1])
  return 0


if __name__ == "__main__":
  sys.exit(main())
