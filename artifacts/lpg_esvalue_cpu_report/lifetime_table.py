"""The lifetime-matched step sizes an artifact carries, as a markdown table.

    python artifacts/lpg_esvalue_cpu_report/lifetime_table.py artifacts/lpg_esvalue_cpu.json

Reads ``meta_test[kind]["by_lifetime"]`` of a rule's metadata (written by
``lpg-ship --meta-test-lifetimes``; ``meta_train.validation.lifetime_settings``) and prints,
per agent kind and lifetime length, each validation task's normalised score at every
candidate step size, the kind's mean, and the step size chosen (bold).
"""
from __future__ import annotations

import json
import sys


def table(meta: dict) -> str:
  lines = []
  for kind, settings in meta["meta_test"].items():
    entries = settings.get("by_lifetime") or []
    if not entries:
      continue
    lrs = entries[0]["learning_rates"]
    lines += [f"**{kind}** agents (alpha_y {entries[0]['alpha_y']:g}):", "",
              "| lifetime (updates) | task | " + " | ".join(f"{lr:g}" for lr in lrs) + " |",
              "|---|---|" + "---|" * len(lrs)]
    for e in entries:
      cells = {t: s for t, s in e["scores"].items()}
      mean = [sum(v[i] for v in cells.values() if v[i] is not None)
              / max(1, sum(v[i] is not None for v in cells.values())) for i in range(len(lrs))]
      for task, scores in list(cells.items()) + [("mean (chooses)", mean)]:
        row = [("-" if s is None else
                f"**{s:.3f}**" if task.startswith("mean") and lr == e["learning_rate"]
                else f"{s:.3f}") for lr, s in zip(lrs, scores)]
        lines.append(f"| {e['updates']} | {task} | " + " | ".join(row) + " |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    print(table(json.load(f)))
