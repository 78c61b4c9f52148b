"""Aggregates per-meta-update metrics on the host into ``metrics.jsonl`` lines."""
from __future__ import annotations

import json
import os

import numpy as np

from envs import returns
from meta_train import levels


class MetricsLogger:
  """Accumulates ``StepMetrics`` and writes one JSON object per ``log_every`` updates.

  Each line holds: ``meta_update``, ``wall_time_s``, ``meta_loss``,
  ``grad_norm``, ``skipped`` (this interval) and ``skipped_total``,
  ``agent_steps`` (cumulative), ``agent_steps_per_s``,
  ``mean_episode_return`` / ``mean_normalised_return`` (over envs with
  episodes), and per env: ``episode_return`` (episodes that ended in the
  interval), ``normalised_return``, ``finished_lifetimes`` with their mean
  ``lifetime_return`` / ``lifetime_normalised_return``, and the bandit's
  current ``bandit_best`` arm (lr, alpha_y) with its probability; with a level
  curriculum, its ``curriculum`` statistics (``meta_train.levels.summarise``).
  """

  def __init__(self, path: str, config, meta_train, resume: bool, start_step: int,
               write: bool = True):
    self.path, self.config, self.mt, self.write = path, config, meta_train, write
    self.names = list(config.envs)
    if resume and write and os.path.exists(path):
      self._truncate_after(start_step)
    self._reset()
    self.skipped_total = 0
    if resume and os.path.exists(path):
      with open(path) as f:
        lines = [json.loads(l) for l in f if l.strip()]
      totals = [l["skipped_total"] for l in lines if "skipped_total" in l]
      if totals:
        self.skipped_total = totals[-1]

  def _truncate_after(self, step: int) -> None:
    """Drops lines past ``step`` (written after the checkpoint a resume starts from)."""
    with open(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l)["meta_update"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(lines)
    os.replace(tmp, self.path)

  def write_line(self, line: dict) -> None:
    """Appends one JSON line (a validation record, say) to metrics.jsonl."""
    if self.write:
      with open(self.path, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())

  def _reset(self):
    self.items = []
    self.seconds = 0.0

  def _normalise(self, e, value):
    ref = self.mt.references[e]
    if ref is None or value is None:
      return None
    return returns.normalise(value, ref)

  def add(self, metrics, seconds: float, step: int, wall: float) -> dict | None:
    """Adds the metrics of one compiled call (leading dim: updates)."""
    n = int(np.asarray(metrics[0]).shape[0])
    for i in range(n):
      self.items.append(type(metrics)(*[np.asarray(x)[i] for x in metrics]))
    self.seconds += seconds
    if len(self.items) >= self.config.log_every:
      return self.flush(step, wall)
    return None

  def flush(self, step: int, wall: float) -> dict | None:
    if not self.items:
      return None
    m = type(self.items[0])(*[np.stack(x) for x in zip(*self.items)])
    n = len(self.items)
    per_env = {}
    rets, norms = [], []
    for e, name in enumerate(self.names):
      eps = float(m.episodes[:, e].sum())
      ret = float(m.episode_return_sum[:, e].sum() / eps) if eps else None
      norm = self._normalise(e, ret)
      fin = float(m.finished[:, e].sum())
      probs = m.arm_probs[-1, e]
      best = int(np.argmax(probs))
      lr, ay = self.mt.arm_table[e, best]
      per_env[name] = {
          "episode_return": ret, "normalised_return": norm, "episodes": eps,
          "finished_lifetimes": fin,
          "lifetime_return": float(m.finished_return_sum[:, e].sum() / fin) if fin else None,
          "lifetime_normalised_return": float(m.finished_norm_sum[:, e].sum() / fin) if fin else None,
          "bandit_best": {"learning_rate": float(lr), "alpha_y": float(ay),
                          "probability": float(probs[best])},
          "policy_entropy": float(m.entropy[:, e].mean()),
          "pi_hat_sq": float(m.pi_hat_sq[:, e].mean()),
      }
      if getattr(self.mt.setup, "curricula", None) and self.mt.setup.curricula[e] is not None:
        per_env[name]["curriculum"] = levels.summarise(m.curriculum[:, e])
      if ret is not None:
        rets.append(ret)
      if norm is not None:
        norms.append(norm)
    skipped = int(m.skipped.sum())
    self.skipped_total += skipped
    finite_loss = m.meta_loss[np.isfinite(m.meta_loss)]
    line = {
        "meta_update": step, "wall_time_s": round(wall, 2),
        "meta_loss": float(finite_loss.mean()) if finite_loss.size else None,
        "grad_norm": float(np.nanmean(np.where(np.isfinite(m.grad_norm), m.grad_norm, np.nan)))
        if np.isfinite(m.grad_norm).any() else None,
        "skipped": skipped, "skipped_total": self.skipped_total,
        "agent_steps": step * self.config.agent_steps_per_update,
        "agent_steps_per_s": n * self.config.agent_steps_per_update / max(self.seconds, 1e-9),
        "mean_episode_return": float(np.mean(rets)) if rets else None,
        "mean_normalised_return": float(np.mean(norms)) if norms else None,
        "envs": per_env,
    }
    self.write_line(line)
    self._reset()
    postfix = {"loss": f"{line['meta_loss']:.3f}" if line["meta_loss"] is not None else "nan",
               "steps/s": f"{line['agent_steps_per_s']:,.0f}"}
    if line["mean_normalised_return"] is not None:
      postfix["norm_ret"] = f"{line['mean_normalised_return']:.2f}"
    elif line["mean_episode_return"] is not None:
      postfix["ret"] = f"{line['mean_episode_return']:.2f}"
    return postfix
