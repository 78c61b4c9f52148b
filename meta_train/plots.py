"""Meta-training curves from ``metrics.jsonl`` (plain or gzip-compressed).

    python -m meta_train.plots runs/cpu/metrics.jsonl curve.png
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
    for env, m in line["envs"].items():
      rows.append({"meta_update": line["meta_update"], "env": env,
                   "episode_return": m["episode_return"],
                   "normalised_return": m["normalised_return"],
                   "meta_loss": line["meta_loss"]})
  return pd.DataFrame(rows)


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
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if len(argv) != 2:
    print("usage: python -m meta_train.plots METRICS.jsonl[.gz] OUT.png", file=sys.stderr)
    return 2
  import matplotlib
  matplotlib.use("Agg")  # the entry point picks the backend: files only, no display needed
  plot_meta_training(argv[0], argv[1])
  return 0


if __name__ == "__main__":
  sys.exit(main())
