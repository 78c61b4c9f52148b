"""Table and figure of the entropy-bonus sweep (README beside this file has the commands).

python artifacts/lpg_recipe_cpu_report/entropy_bonus/make_table.py RUNS_DIR
reads RUNS_DIR/eb5m-recipe-<Env>-<bonus>/ (lpg-apply outputs) and writes sweep.csv, sweep.md
and curves.png here.
"""
import glob
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
runs = sys.argv[1]
rows, curves = [], {}
for d in sorted(glob.glob(os.path.join(runs, "eb5m-recipe-*"))):
  env, bonus = os.path.basename(d)[len("eb5m-recipe-"):].rsplit("-", 1)
  s = json.load(open(os.path.join(d, "summary.json")))
  c = pd.read_csv(os.path.join(d, "curves.csv"))
  last = c[c.step > 0.75 * c.step.max()]
  rows.append(dict(env=env, entropy_bonus=float(bonus), final_return_mean=s["final_return_mean"],
                   final_return_std=s["final_return_std"], final_entropy=last["entropy"].mean() if "entropy" in c else float("nan"),
                   seeds=s["seeds"], steps=s["steps"]))
  curves[(env, float(bonus))] = c.groupby("step")[[k for k in ("episode_return", "entropy")
                                                   if k in c]].mean()
df = pd.DataFrame(rows).sort_values(["env", "entropy_bonus"])
df.to_csv(os.path.join(HERE, "sweep.csv"), index=False)
with open(os.path.join(HERE, "sweep.md"), "w") as f:
  f.write("| env | entropy bonus | return (mean ± sd, 3 seeds) | entropy (last quarter) |\n"
          "|---|---|---|---|\n")
  for r in df.itertuples():
    f.write(f"| {r.env} | {r.entropy_bonus:g} | {r.final_return_mean:.2f} ± "
            f"{r.final_return_std:.2f} | "
            + ("-" if r.final_entropy != r.final_entropy else f"{r.final_entropy:.3f}") + " |\n")
envs = sorted(df.env.unique())
colour = {b: f"C{i}" for i, b in enumerate(sorted(df.entropy_bonus.unique()))}
fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False)
for j, env in enumerate(envs):
  for (e, b), c in sorted(curves.items()):
    if e == env:
      axes[0, j].plot(c.index, c.episode_return, color=colour[b], label=f"bonus {b:g}")
      if "entropy" in c:
        axes[1, j].plot(c.index, c.entropy, color=colour[b], label=f"bonus {b:g}")
  axes[0, j].set_title(f"{env}: lpg_recipe_cpu + entropy bonus")
  axes[0, j].set_ylabel("episode return (mean of 3 seeds)")
  axes[1, j].set_ylabel("policy entropy (nats)")
  axes[1, j].set_xlabel("env steps per seed")
  axes[0, j].legend()
fig.tight_layout()
fig.savefig(os.path.join(HERE, "curves.png"), dpi=80)
print(df.to_string(index=False))
