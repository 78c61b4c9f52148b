"""The headline table of a multi-rule ``lpg-report`` (README beside this file has the commands).

python artifacts/lpg_esvalue_cpu_report/make_table.py REPORT_DIR [MAIN_RULE_ROW] > table.md

Reads REPORT_DIR/report.csv and REPORT_DIR/runs.json (and each run's summary.json for the
per-seed returns) and prints one markdown row per env: every lpg row, the tuned baselines with
the value tuning chose, random, MAIN_RULE_ROW (default ``lpg:esvalue``) / tuned A2C, and the
GROOVE figure where one is published; then the median ratio to tuned A2C of every lpg row.
Columns that the report does not have are left out.
"""
import json
import os
import sys

import numpy as np
import pandas as pd

# Best published MinAtar returns of a rule meta-trained on grid worlds (GROOVE, issue 17).
GROOVE = {"Asterix": 12, "Breakout": 4.8, "Freeway": 6, "SpaceInvaders": 105}


def fmt(x: float) -> str:
  return "-" if x != x else f"{x:.3g}"


def main(report: str, main_row: str = "lpg:esvalue") -> None:
  df = pd.read_csv(os.path.join(report, "report.csv"))
  dirs = {(r["dir"].split("/")[1], r["label"]): r["dir"]
          for r in json.load(open(os.path.join(report, "runs.json")))}
  lpg_rows = sorted({a for a in df.algo if a.startswith("lpg")},
                    key=lambda a: (a.split("+")[0] != main_row, a.endswith("+tuned"), a))
  base_rows = [a for a in ("a2c+tuned", "ppo+tuned", "random") if a in set(df.algo)]
  cols = lpg_rows + base_rows
  print("| game | role | " + " | ".join(cols) + f" | {main_row} / a2c+tuned | GROOVE |")
  print("|---|---|" + "---|" * (len(cols) + 2))
  ratios = {a: [] for a in lpg_rows}
  for env in dict.fromkeys(df.env):
    e = df[df.env == env].set_index("algo")
    cells = []
    for a in cols:
      if a not in e.index:
        cells.append("-")
        continue
      r = e.loc[a]
      cell = f"{fmt(r.final_return_mean)} ± {fmt(r.final_return_std)}"
      if a == main_row:
        s = json.load(open(os.path.join(report, dirs[(env, a)], "summary.json")))
        cell = f"**{cell}** ({', '.join(fmt(x) for x in s['final_return_per_seed'])})"
      if isinstance(r.tuned, str):
        cell += f" [{r.tuned.replace('lr_scale=', 'lr x')}]"
      cells.append(cell)
    a2c = e.final_return_mean.get("a2c+tuned", np.nan)
    for a in lpg_rows:
      if a in e.index and a2c > 0:
        ratios[a].append(e.final_return_mean[a] / a2c)
    main = e.final_return_mean.get(main_row, np.nan)
    role = e.role.get(main_row, e.role.iloc[0])
    print(f"| {env} | {role} | " + " | ".join(cells) +
          f" | {fmt(main / a2c if a2c > 0 else np.nan)} | {GROOVE.get(env, '-')} |")
  print()
  print("| rule row | games | median of lpg / tuned A2C | per game |")
  print("|---|---|---|---|")
  for a in lpg_rows:
    if ratios[a]:
      print(f"| {a} | {len(ratios[a])} | {np.median(ratios[a]):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios[a])} |")


if __name__ == "__main__":
  main(*sys.argv[1:])
