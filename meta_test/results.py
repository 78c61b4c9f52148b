"""Results of a meta-test run: final returns, curves as pandas frames, plots, ``summary.json``.

Plots use ``matplotlib.figure.Figure`` directly (no pyplot, no backend): the command
lines and notebooks that call these functions keep whatever backend they chose.
"""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from meta_test.plan import RunPlan, agent_dict, hyperparameters
from meta_test.train import RunResult

FINAL_FRACTION = 0.1
MAX_CURVE_POINTS = 100
SUMMARY = "summary.json"


def final_window(episodes: np.ndarray, fraction: float = FINAL_FRACTION) -> int:
  """Number of trailing updates averaged for the final return.

  The last ``fraction`` of updates, widened (per run, same for all seeds) until
  every seed has at least one finished episode in it, if possible.
  """
  u = episodes.shape[1]
  k = max(1, int(round(fraction * u)))
  while k < u and np.any(episodes[:, u - k:].sum(axis=1) == 0):
    k += 1
  return k


def final_returns(result: RunResult) -> tuple[np.ndarray, int]:
  """Per-seed mean return ``[S]`` of episodes finished in the final window, and its length."""
  m = result.metrics
  k = final_window(m.episodes)
  ret = m.return_sum[:, -k:].sum(1)
  cnt = m.episodes[:, -k:].sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(cnt > 0, ret / np.maximum(cnt, 1), np.nan), k


def curve_frame(result: RunResult, max_points: int = MAX_CURVE_POINTS):
  """Learning curves as a DataFrame: step, seed, episode_return, episodes, entropy.

  Updates are grouped into at most ``max_points`` bins; ``episode_return`` is
  the mean return of the episodes finished in a bin (NaN if none), ``step``
  the environment steps per seed at the bin's end, ``entropy`` the mean policy
  entropy (nats) of the bin's rollouts (how fast a rule makes its agents commit).
  Runs that learn meta-parameters (mgrl) add one column per parameter (``gamma``,
  ``lambda``), its value at the bin's last update.
  """
  import pandas as pd
  m = result.metrics
  s, u = m.episodes.shape
  edges = np.unique(np.linspace(0, u, min(u, max_points) + 1).round().astype(int))
  rows = []
  entropy = np.asarray(m.entropy, np.float64)
  for a, b in zip(edges[:-1], edges[1:]):
    cnt = m.episodes[:, a:b].sum(1)
    ret = m.return_sum[:, a:b].sum(1)
    ent = entropy[:, a:b].mean(1)
    for seed in range(s):
      rows.append((int(b) * result.steps_per_update, seed,
                   float(ret[seed] / cnt[seed]) if cnt[seed] > 0 else float("nan"),
                   int(cnt[seed]), float(ent[seed])))
  df = pd.DataFrame(rows, columns=["step", "seed", "episode_return", "episodes", "entropy"])
  for name, values in m.meta_params.items():
    df[name] = [float(values[seed, b - 1]) for b in edges[1:] for seed in range(s)]
  return df


def meta_params(result: RunResult) -> dict | None:
  """Final meta-parameters per seed, e.g. ``{"gamma": [S], "lambda": [S]}`` (mgrl), else None."""
  learned = result.metrics.meta_params
  return {k: [float(x) for x in v[:, -1]] for k, v in learned.items()} if learned else None


# ------------------------------------------------------------------------ plots
def plot_curve_on(ax, df, label=None, column: str = "episode_return") -> None:
  """Mean over seeds and the min..max spread of a ``curve_frame``'s ``column`` on ``ax``."""
  g = df.groupby("step")[column]
  # Bins where no episode ended (long episodes, e.g. Freeway) are NaN: drop
  # them so the curve connects the bins that have data.
  mean = g.mean().dropna()
  lo, hi = g.min().reindex(mean.index), g.max().reindex(mean.index)
  line, = ax.plot(mean.index, mean.values, label=label, marker="." if len(mean) < 30 else None)
  ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2, color=line.get_color())
  ax.set_xlabel("environment steps per seed")
  ax.set_ylabel(column.replace("_", " "))


def plot_curve(df, path: str, title: str) -> None:
  """A ``curve_frame`` as a PNG."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  plot_curve_on(ax, df, label=None)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_runs(runs: list[tuple[str, str]], path: str, title: str) -> None:
  """Several runs on the same axes: ``(label, run directory with curves.csv)`` each."""
  from matplotlib.figure import Figure
  import pandas as pd
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for label, run_dir in runs:
    plot_curve_on(ax, pd.read_csv(os.path.join(run_dir, "curves.csv")), label=label)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------- summary
def normalised_score(env_name: str, value: float) -> float | None:
  """``envs.returns.normalised_score`` when that module knows the env, else None."""
  try:
    from envs import returns as env_returns
  except ImportError:
    return None
  try:
    score = env_returns.normalised_score(env_name, value)
  except (OSError, KeyError, ValueError, NotImplementedError, TypeError):
    return None  # no reference table yet, or no optimum known for this env
  return None if score is None or not np.isfinite(score) else float(score)


def json_safe(value):
  """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def summarise(plan: RunPlan, result: RunResult, wall_time_s: float) -> dict:
  """The ``summary.json`` contract (strict JSON: NaN and infinities are null)."""
  per_seed, window = final_returns(result)
  learned = meta_params(result)
  finite = np.any(np.isfinite(per_seed))
  mean = float(np.nanmean(per_seed)) if finite else float("nan")
  std = float(np.nanstd(per_seed)) if finite else float("nan")
  choice = plan.choice
  summary = {
      "env": plan.source.name, "algo": choice.algo, "steps": plan.steps,
      "env_steps_per_seed": plan.num_updates * plan.run.steps_per_update,
      "seeds": plan.seeds, "final_return_mean": mean, "final_return_std": std,
      "final_return_per_seed": list(per_seed), "final_window_updates": int(window),
      "final_entropy": float(np.mean(np.asarray(result.metrics.entropy)[:, -window:])),
      "normalised_score": normalised_score(plan.source.name, mean) if math.isfinite(mean) else None,
      "episodes": int(result.metrics.episodes.sum()),
      "rule": {"path": choice.path, "checksum": choice.checksum, "config": choice.settings_dict(),
               "family": choice.family},
      "wall_time_s": float(wall_time_s), "steps_per_s": float(result.steps_per_s),
      "compiled": not plan.source.host, "agent": agent_dict(plan.run.agent),
      "hyperparameters": hyperparameters(plan),
      "hyperparameter_sources": plan.hyper_sources, "obs_kind": plan.source.obs_spec.kind,
      "versions": {"jax": jax.__version__},
      "settings": plan.settings(), "settings_key": plan.settings_key(),
  }
  if learned is not None:
    summary["meta_params"] = learned
  if choice.family is not None:
    summary["family"] = choice.family
  return json_safe(summary)


def write_json(path: str, data) -> None:
  """Strict JSON, written atomically (a temporary file, then a rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(json_safe(data), f, indent=2, allow_nan=False)
  os.replace(tmp, path)


def read_summary(run_dir: str) -> dict | None:
  """The run's ``summary.json``, or None if missing or unreadable (an unfinished run)."""
  try:
    with open(os.path.join(run_dir, SUMMARY)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_run(plan: RunPlan, result: RunResult, wall_time_s: float) -> dict:
  """Writes ``curves.csv``, ``curve.png`` and, last (it marks completion),
  ``summary.json`` into ``plan.out``; returns the summary."""
  summary = summarise(plan, result, wall_time_s)
  os.makedirs(plan.out, exist_ok=True)
  df = curve_frame(result)
  df.to_csv(os.path.join(plan.out, "curves.csv"), index=False)
  plot_curve(df, os.path.join(plan.out, "curve.png"),
             f"{plan.source.name}: {plan.choice.algo} ({plan.seeds} seeds)")
  write_json(os.path.join(plan.out, SUMMARY), summary)
  return summary
