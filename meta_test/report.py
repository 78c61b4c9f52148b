"""``lpg-report``: a rule against baselines over a suite of environments.

::

  lpg-report --rule [LABEL=]R [--rule ...] --suite train|minatar|<comma list>
             --algos lpg,a2c[,random][,mgrl][,ppo] --steps N --seeds S --out DIR
             [--tune NAME=V1,... [--algos lpg,lpg+tuned,a2c+tuned,...]]
             [--resume | --overwrite] [--debug]

Runs every (env, algo) with ``meta_test.run`` into ``DIR/runs/<env>/<algo>/``, then writes
``DIR/report.csv``, ``DIR/report.md`` (one row per (env, algo)), ``DIR/scores.png`` (bar
chart), ``DIR/curves.png`` (learning-curve grid), ``DIR/entropy.png`` (the agents' policy
entropy, same grid) and ``DIR/runs.json`` (the runs the report is made of).  A report
contains only runs made with its own settings: ``--resume`` reuses a finished run only when
its settings (steps, seeds, agent, hyperparameters, the algorithm's settings, the rule's
checksum) match, and reruns it otherwise; ``--overwrite`` first removes the earlier report
and its runs; ``--table-only`` runs nothing and makes the table of the runs already
finished (as ``--resume`` would reuse them), naming the rows it leaves out.

Several rules (``--rule toy15=a.pkl --rule recipe=b.pkl``): every ``lpg`` entry of
``--algos`` runs once per rule, as rows ``lpg:toy15`` and ``lpg:recipe`` (a label defaults to
the file's stem; with one rule the row is plain ``lpg``); an entry ``lpg:LABEL`` is that
rule's alone (``--algos lpg,lpg:recipe+tuned``: both rules, and only ``recipe`` tuned).

Tuning (``--tune``): without a ``+tuned`` entry every algorithm that learns (all but
``random``) is tuned and keeps its name; with one, only the ``NAME+tuned`` entries are, so a
report can hold an algorithm both ways (``--algos lpg,lpg+tuned,a2c+tuned,random``: the
rule with its artifact's settings and tuned, A2C tuned).

With ``--rule``, a ``role`` column says what each env was to the rule: ``train`` (it was
meta-trained on it), ``validation`` (a held-out task that chose it: the best-validated
rule is picked on it, so it is not a test of the rule) or ``test`` (neither).  A rule's rows
take that rule's role; the other rows the strongest role any of the rules gives the env.

``--jobs N`` runs N runs at a time in single-threaded worker processes
(``meta_test.workers``), in row order, a tuned row's reported run ahead of the rest once its
tuning runs are in (rows finish one after another); the report equals the one-process report
(same seeds and choices).  A tuned row whose tuning chooses another row's own settings
(``lpg+tuned`` choosing ``lr_scale=1``) gets a copy of that row's finished run, not a rerun.

Columns: ``final_return_mean/std``, ``normalised_score`` (``(R - R_random) /
(R_opt - R_random)`` where ``envs.returns`` knows the optimum), ``ratio_to_a2c``
(``R / R_a2c``, when ``R_a2c > 0``: a ratio of negative returns, e.g. Acrobot's, means
nothing) and, when a random row exists,
``a2c_relative`` (``(R - R_random) / (R_a2c - R_random)``); ``R_a2c`` is the ``a2c+tuned``
row's where the env has one (the stronger baseline), else the ``a2c`` row's;
``final_entropy``: the agents' mean policy entropy (nats) over the same final window (near 0:
the agents stopped exploring).  Under the table, ``report.md`` has one line per row of
``--algos``: its envs and the medians of ``ratio_to_a2c`` and ``a2c_relative``, over all envs
and over the ``test`` envs alone.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import sys
from typing import Callable, NamedTuple

import numpy as np

import envs
from lpg import cli
from meta_test.algos import ALGOS, unknown_algo_message
from meta_test.plan import RunPlan, env_slug, make_plan
from meta_test.results import SUMMARY, plot_curve_on, read_summary, write_json
from meta_test import tune as tune_lib
from meta_test import workers as workers_lib
from meta_test.run import execute

PROG = "lpg-report"
SUITE_ALIASES = {"train": "all"}
COLUMNS = ["env", "algo", "final_return_mean", "final_return_std", "normalised_score",
           "ratio_to_a2c", "a2c_relative", "final_entropy", "seeds", "steps", "steps_per_s",
           "wall_time_s"]
MANIFEST = "runs.json"
TUNED = "+tuned"
ROLE_ORDER = ("test", "validation", "train")   # weakest to strongest claim on an env
OUTPUTS = ("runs", MANIFEST, "report.csv", "report.md", "scores.png", "curves.png", "entropy.png")


def resolve_suite(suite: str) -> list[str]:
  """``train`` (the 15 meta-training envs), ``minatar``, any ``envs.SUITES`` name,
  or a comma-separated list of env names (each checked with ``envs.make``)."""
  name = SUITE_ALIASES.get(suite, suite)
  if name in envs.SUITES:
    return list(envs.SUITES[name])
  names = [n.strip() for n in suite.split(",") if n.strip()]
  if not names:
    raise cli.UserError("--suite is empty; give a suite name or a comma list of env names")
  for n in names:
    if n.startswith("atari/") or ":" in n:
      continue
    try:
      envs.make(n)
    except ValueError as e:   # a close-match suggestion; a single word may be a suite
      suites = ", ".join(sorted(set(envs.SUITES) | set(SUITE_ALIASES)))
      hint = f"; suites: {suites}" if len(names) == 1 else ""
      raise cli.UserError(f"--suite: {cli.one_line(e)}{hint}") from None
  return names


def task_roles(loaded_rule) -> dict[str, str]:
  """``{env: "train" | "validation"}`` from a rule's metadata (absent envs: ``test``)."""
  meta = loaded_rule.metadata or {}
  train = meta.get("train_config") or {}
  roles = {e: "validation" for e in meta.get("validate_envs") or train.get("validate_envs") or ()}
  roles.update({e: "train" for e in meta.get("envs") or train.get("envs") or ()})
  return roles


def strongest_role(roles: list[dict[str, str]], env: str) -> str:
  """The strongest role (train > validation > test) any of ``roles`` gives ``env``."""
  return max((r.get(env, "test") for r in roles), key=ROLE_ORDER.index, default="test")


def run_dir(out: str, env: str, algo: str) -> str:
  """``out/runs/<env>/<algo>``; ``algo`` may be a row label (``lpg:toy15``, ``a2c+tuned``)."""
  return os.path.join(out, "runs", env_slug(env), re.sub(r"[^A-Za-z0-9._+-]", "_", algo))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row kind of the report: ``algo`` (an ``ALGOS`` name) shown as ``label``, tuned or
  not, with the rule ``rule`` (a ``--rule`` path) where the algorithm needs one."""
  algo: str
  label: str
  tuned: bool = False
  rule: str | None = None


def _repeated(names: list[str]) -> str | None:
  """The first name that occurs twice in ``names``, or None."""
  seen: set[str] = set()
  for n in names:
    if n in seen:
      return n
    seen.add(n)
  return None


class Job(NamedTuple):
  """One (env, entry) of a report: its ``RunPlan`` with default values, the tuning plans
  ``(values, plan)`` (empty for an entry not tuned), ``make(seeds, out, **make_plan_kwargs)
  -> RunPlan``, the ``Entry`` and the env's role (None without ``--rule``)."""
  plan: RunPlan
  tuning: list
  make: Callable
  entry: Entry
  role: str | None


def parse_rules(items: list[str] | None) -> list[tuple[str, str]]:
  """``--rule`` values -> ``[(label, path)]``; ``LABEL=PATH`` or ``PATH`` (label: its stem)."""
  rules = []
  for item in items or []:
    label, eq, path = item.partition("=")
    if not eq or "/" in label or os.sep in label:
      label, path = os.path.splitext(os.path.basename(item))[0], item
    if not label or not path:
      raise cli.UserError(f"--rule {item!r}: give PATH or LABEL=PATH")
    rules.append((label, path))
  twice = _repeated([r[0] for r in rules])
  if twice is not None:
    raise cli.UserError(f"--rule: label {twice!r} is given twice; name them LABEL=PATH")
  return rules


# ------------------------------------------------------------------------ table
def load_summaries(out: str) -> list[dict]:
  """The summaries of the report's runs (those listed in ``out/runs.json``), each with its
  run directory as ``dir``; runs whose settings changed since are left out."""
  try:
    with open(os.path.join(out, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return []
  found = []
  for entry in manifest:
    d = os.path.join(out, entry["dir"])
    s = read_summary(d)
    if s is not None and s.get("settings_key") == entry["settings_key"]:
      found.append(dict(s, dir=d, algo=entry.get("label", s.get("algo")),
                        **({"role": entry["role"]} if "role" in entry else {})))
  return found


def build_table(summaries: list[dict]):
  """One row per (env, algo): a pandas DataFrame with ``COLUMNS``."""
  import pandas as pd
  columns = COLUMNS + (["tuned"] if any("tuned" in s for s in summaries) else [])
  if any("role" in s for s in summaries):
    columns.insert(1, "role")
  rows = [{k: s.get(k) for k in columns if k in s} for s in summaries]
  for row in rows:
    if "tuned" in row:
      row["tuned"] = tune_lib.combo_slug(row["tuned"] or {})
  df = pd.DataFrame(rows, columns=columns)
  df = df.drop_duplicates(["env", "algo"], keep="last")
  for col in ("final_return_mean", "final_return_std", "normalised_score"):
    df[col] = pd.to_numeric(df[col], errors="coerce")
  by = {(r.env, r.algo): r.final_return_mean for r in df.itertuples()}
  ratio, rel = [], []
  for r in df.itertuples():
    a2c = by.get((r.env, "a2c" + TUNED), by.get((r.env, "a2c"), float("nan")))
    rnd = by.get((r.env, "random"), float("nan"))
    ratio.append(r.final_return_mean / a2c if np.isfinite(a2c) and a2c > 1e-8 else np.nan)
    denom = a2c - rnd
    rel.append((r.final_return_mean - rnd) / denom
               if np.isfinite(denom) and abs(denom) > 1e-8 else np.nan)
  df["ratio_to_a2c"] = ratio
  df["a2c_relative"] = rel
  return df.sort_values(["env", "algo"]).reset_index(drop=True)


def summarise(df):
  """Per algo row of ``build_table``'s ``df``: its number of envs and the medians over them of
  ``ratio_to_a2c`` and ``a2c_relative`` (over the envs where each is defined), over every env
  and, with a ``role`` column, over the ``test`` envs alone (a rule's honest number)."""
  import pandas as pd
  parts = [("", df)] + ([("test_", df[df["role"] == "test"])] if "role" in df else [])
  rows = []
  for algo in sorted(set(df["algo"])):
    row = {"algo": algo}
    for prefix, part in parts:
      sub = part[part["algo"] == algo]
      row[f"{prefix}envs"] = len(sub)
      row[f"{prefix}median_ratio_to_a2c"] = float(sub["ratio_to_a2c"].median())
      row[f"{prefix}median_a2c_relative"] = float(sub["a2c_relative"].median())
    rows.append(row)
  return pd.DataFrame(rows)


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


# ------------------------------------------------------------------------ plots
def plot_scores(df, path: str) -> None:
  """Grouped bars per env: normalised score where every row has one, else final return."""
  from matplotlib.figure import Figure
  use_norm = df["normalised_score"].notna().all() and len(df)
  col = "normalised_score" if use_norm else "final_return_mean"
  env_names = list(dict.fromkeys(df["env"]))
  algos = list(dict.fromkeys(df["algo"]))
  width = 0.8 / max(len(algos), 1)
  fig = Figure(figsize=(max(4, 1.2 * len(env_names) + 2), 4))
  ax = fig.subplots()
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


def plot_curves(summaries: list[dict], path: str, column: str = "episode_return") -> None:
  """One subplot per env, one line (mean, min..max shading) per algo, of ``column`` of the
  runs' ``curves.csv`` (runs without it are left out)."""
  from matplotlib.figure import Figure
  import pandas as pd
  env_names = sorted({s["env"] for s in summaries})
  n = max(len(env_names), 1)
  cols = min(4, n)
  rows = math.ceil(n / cols)
  fig = Figure(figsize=(4 * cols, 3 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, env in zip(axes.flat, env_names):
    for s in sorted((s for s in summaries if s["env"] == env), key=lambda s: s["algo"]):
      csv = os.path.join(s["dir"], "curves.csv")
      df = pd.read_csv(csv) if os.path.exists(csv) else None
      if df is not None and column in df:
        plot_curve_on(ax, df, label=s["algo"], column=column)
    ax.set_title(env)
    if ax.lines:
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


SUMMARY_HEAD = ("Medians over envs (where defined) per row; `test_`: over the envs whose role "
                "in that row is `test` (a rule's row: envs that rule neither trained on nor "
                "was chosen on; other rows: envs no rule of the report did).")


def write_report(out: str, missing: list[str] = ()):
  """Collects the report's runs (``out/runs.json``) into the table files and plots; returns
  the table.  ``missing``: rows left out (``--table-only``), named under the table."""
  summaries = load_summaries(out)
  df = build_table(summaries)
  df.to_csv(os.path.join(out, "report.csv"), index=False)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(to_markdown(df))
    if len(df):
      f.write("\n" + SUMMARY_HEAD + "\n\n" + to_markdown(summarise(df)))
    if missing:
      f.write(f"\nLeft out, not finished when this table was made: {', '.join(missing)}.\n")
  if len(df):
    plot_scores(df, os.path.join(out, "scores.png"))
    plot_curves(summaries, os.path.join(out, "curves.png"))
    plot_curves(summaries, os.path.join(out, "entropy.png"), column="entropy")
  return df


# -------------------------------------------------------------------------- CLI
def build_parser() -> cli.Parser:
  p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--rule", action="append", metavar="[LABEL=]PATH",
                 help="rule artifact (.pkl); needed when --algos has lpg; repeat it to compare "
                      "rules (rows lpg:LABEL, LABEL defaulting to the file's stem)")
  p.add_argument("--suite", default="train",
                 help="train (15 meta-training envs), minatar, another envs.SUITES name, "
                      "or a comma-separated list of env names")
  p.add_argument("--algos", default="lpg,a2c",
                 help=f"comma list of {', '.join(ALGOS)}; NAME{TUNED} tunes only that entry "
                      "(with --tune), so lpg,lpg+tuned reports the rule both ways; "
                      "lpg:LABEL is one rule of several (lpg,lpg:new+tuned)")
  p.add_argument("--steps", type=cli.positive_int, default=1_000_000,
                 help="env steps per seed per run (default 1e6)")
  p.add_argument("--seeds", type=cli.positive_int, default=3)
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--resume", action="store_true",
                 help="reuse finished runs whose settings match; rerun the others")
  p.add_argument("--table-only", action="store_true",
                 help="run nothing: the table of the runs in --out already finished with "
                      "these settings (as --resume would reuse them); the others are named "
                      "and left out (an interim table of a long report)")
  p.add_argument("--overwrite", action="store_true",
                 help="remove an earlier report in --out (its runs included) first")
  p.add_argument("--agent", default=None, help="force an agent kind for every env")
  p.add_argument("--hidden", type=cli.widths, default=None, metavar="W,W,...",
                 help="MLP agent widths for every run (default: by observation kind)")
  p.add_argument("--num-envs", type=cli.positive_int, default=None)
  p.add_argument("--rollout-len", type=cli.positive_int, default=None)
  p.add_argument("--tune", action="append", metavar="NAME=V1,V2,...",
                 help="try these values per (env, algo) on tuning seeds, report the best on "
                      "fresh seeds (repeatable; lr, lr_scale (x the run's own step size), "
                      "num_envs, rollout_len or an algorithm "
                      "setting such as entropy_coef)")
  p.add_argument("--tune-seeds", type=cli.positive_int, default=2,
                 help="seeds per tried value (default 2)")
  p.add_argument("--jobs", type=cli.positive_int, default=1,
                 help="runs at the same time, each in its own single-threaded XLA process "
                      "(default 1: one run on all cores); on a CPU host give the core count")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--debug", action="store_true", help="print tracebacks of user errors")
  return p


def parse_algos(text: str, rules: list[tuple[str, str]], tuning: bool) -> list[Entry]:
  """``--algos`` -> the report's ``Entry`` list (see the module docstring for ``+tuned``
  and several rules); ``UserError`` for unknown names, a ``+tuned`` without ``--tune``, a
  tuned algorithm that does not learn, a repeated row or ``lpg`` without ``--rule``."""
  tokens = [a.strip() for a in text.split(",") if a.strip()]
  if not tokens:
    raise cli.UserError(f"--algos is empty; give a comma list of {', '.join(ALGOS)}")
  explicit = any(t.endswith(TUNED) for t in tokens)
  if explicit and not tuning:
    raise cli.UserError(f"--algos: a {TUNED} entry needs --tune NAME=V1,V2,... (the values "
                        "to try)")
  entries = []
  for token in tokens:
    name, _, label = (token[:-len(TUNED)] if token.endswith(TUNED) else token).partition(":")
    if name not in ALGOS:
      raise cli.UserError(unknown_algo_message(name, "--algos"))
    tuned = token.endswith(TUNED) if explicit else tuning and ALGOS[name].learns
    if tuned and not ALGOS[name].learns:
      raise cli.UserError(f"--algos {token}: {name} has nothing to tune; list it as {name}")
    suffix = TUNED if explicit and tuned else ""
    if not ALGOS[name].needs_rule:
      if label:
        raise cli.UserError(f"--algos {token}: {name} takes no rule; list it as {name}")
      entries.append(Entry(name, name + suffix, tuned))
      continue
    if not rules:
      raise cli.UserError(f"--algos has {name}: pass --rule PATH (a rule artifact .pkl)")
    for rule_label, path in _chosen_rules(token, label, rules):
      row = name if len(rules) == 1 else f"{name}:{rule_label}"
      entries.append(Entry(name, row + suffix, tuned, path))
  twice = _repeated([e.label for e in entries])
  if twice is not None:
    raise cli.UserError(f"--algos lists {twice} twice; give each once")
  return entries


def _chosen_rules(token: str, label: str, rules: list[tuple[str, str]]
                  ) -> list[tuple[str, str]]:
  """The rules an ``--algos`` token runs: every one, or the one ``label`` names."""
  if not label:
    return rules
  chosen = [r for r in rules if r[0] == label]
  if not chosen:
    raise cli.UserError(f"--algos {token}: no --rule is labelled {label!r}; labels: "
                        f"{', '.join(l for l, _ in rules)}")
  return chosen


def check_out(args) -> None:
  """``UserError`` unless ``--out`` may be written: a new or empty directory, or an earlier
  report with ``--resume`` or ``--overwrite`` (not both)."""
  if args.resume and args.overwrite:
    raise cli.UserError("--resume and --overwrite exclude each other; pass one")
  if args.table_only and args.overwrite:
    raise cli.UserError("--table-only and --overwrite exclude each other; pass one")
  if args.table_only and cli.is_empty_dir(args.out):
    raise cli.UserError(f"--table-only makes the table of the runs already in --out; "
                        f"{args.out} has none (run the report without it first)")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise cli.UserError(f"--out {args.out} is a file, not a directory; choose another path")
  if not cli.is_empty_dir(args.out) and not (args.resume or args.overwrite or args.table_only):
    raise cli.UserError(f"--out {args.out} is not empty; pass --resume to continue it "
                        "or --overwrite to redo it")


def make_plans(args) -> list[Job]:
  """Validates the command line (not ``--out``: ``check_out``); returns a ``Job`` for every
  (env, entry)."""
  tune = tune_lib.parse_tune(args.tune)
  rules = parse_rules(args.rule)
  entries = parse_algos(args.algos, rules, bool(tune))
  from lpg.artifact import BUILDERS, load_rule
  loaded = {path: load_rule(path, families=tuple(BUILDERS)) for _, path in rules}
  roles = {path: task_roles(rule) for path, rule in loaded.items()}
  jobs = []
  for env in resolve_suite(args.suite):
    for e in entries:
      make = functools.partial(make_plan, env, e.algo, args.steps, rule_path=e.rule,
                               agent=args.agent, loaded_rule=loaded.get(e.rule),
                               num_envs=args.num_envs, rollout_len=args.rollout_len,
                               hidden=args.hidden)
      plan = make(args.seeds, run_dir(args.out, env, e.label))
      tuning = [(c, make(args.tune_seeds, tune_lib.tune_dir(plan.out, c), overrides=c,
                         seed=tune_lib.TUNE_SEED)) for c in tune_lib.grid(tune)] if e.tuned else []
      role = None if not rules else (roles[e.rule].get(env, "test") if e.rule
                                     else strongest_role(list(roles.values()), env))
      jobs.append(Job(plan, tuning, make, e, role))
  return jobs


def remove_report(out: str) -> None:
  """Removes what an earlier ``lpg-report`` wrote into ``out`` (its runs included)."""
  for name in OUTPUTS:
    path = os.path.join(out, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def reusable(plan: RunPlan) -> tuple[bool, str]:
  """Whether ``plan.out`` holds a finished run made with ``plan``'s settings, and why not."""
  s = read_summary(plan.out)
  if s is None:
    return False, "not finished"
  if s.get("settings_key") != plan.settings_key():
    return False, "made with other settings: rerun"
  return True, "done already, reused"


def finished_runs(jobs: list[Job]) -> list[tuple[dict | None, dict | None]]:
  """``--table-only``: per job, ``(summary, chosen)`` of its finished run made with the
  report's settings (a tuned job's: with the values its finished tuning runs choose;
  ``chosen`` None for a job not tuned), or ``(None, None)``; nothing is run."""
  found = []
  for job in jobs:
    chosen, plan = None, job.plan
    if job.tuning:
      scores = [(c, read_summary(p.out)["final_return_mean"]) for c, p in job.tuning
                if reusable(p)[0]]
      if len(scores) < len(job.tuning):
        found.append((None, None))
        continue
      chosen = tune_lib.best(scores)
      plan = job.make(job.plan.seeds, job.plan.out, overrides=chosen)
    found.append((read_summary(plan.out), chosen) if reusable(plan)[0] else (None, None))
  return found


def _run_or_reuse(plan: RunPlan, args, tag: str, progress: bool) -> dict:
  """The plan's summary: reused (``--resume`` and same settings) or freshly run."""
  done, why = reusable(plan) if args.resume else (False, "")
  if done:
    print(f"{tag}: {why}", file=sys.stderr)
    return read_summary(plan.out)
  if args.resume and why != "not finished":
    print(f"{tag}: {why}", file=sys.stderr)
  return execute(plan, progress=progress)


@functools.lru_cache(maxsize=2)
def _parsed(argv: tuple[str, ...]):
  """``(args, jobs)`` of a command line; cached, so a worker plans a report once."""
  args = build_parser().parse_args(list(argv))
  return args, make_plans(args)


def run_task(argv: tuple[str, ...], index: int, tuning: int | None, chosen: dict | None,
             progress: bool) -> dict:
  """Runs one run of the report ``argv`` plans (in this process or a worker): job
  ``index``'s tuning run number ``tuning``, or (``tuning`` None) its reported run, made with
  the tuned values ``chosen`` where the job is tuned.  Returns the run's summary."""
  args, jobs = _parsed(argv)
  job, tag = jobs[index], _tag(jobs, index)
  if tuning is not None:
    combo, plan = job.tuning[tuning]
    tag += f" tune {tune_lib.combo_slug(combo)}"
  else:
    plan = job.plan if chosen is None else job.make(job.plan.seeds, job.plan.out,
                                                     overrides=chosen)
    twin = _twin(plan, jobs) if chosen is not None and not reusable(plan)[0] else None
    if twin is not None:
      copy_run(twin, plan.out)
      print(f"{tag}: tuning chose {tune_lib.combo_slug(chosen)}, the settings of "
            f"{os.path.relpath(twin, args.out)}: its finished run copied", file=sys.stderr)
      return read_summary(plan.out)
  return _run_or_reuse(plan, args, tag, progress)


def _twin(plan: RunPlan, jobs: list[Job]) -> str | None:
  """The directory of another row's finished run made with ``plan``'s very settings (a
  tuned row whose tuning chose another row's own settings, e.g. ``lpg+tuned`` choosing
  ``lr_scale=1``), or None."""
  key = plan.settings_key()
  for job in jobs:
    s = read_summary(job.plan.out) if job.plan.out != plan.out else None
    if s is not None and s.get("settings_key") == key:
      return job.plan.out
  return None


def copy_run(src: str, dst: str) -> None:
  """Copies a run's files (not its ``tune/``), its ``summary.json`` last (it marks the run
  finished)."""
  os.makedirs(dst, exist_ok=True)
  names = sorted((n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n))),
                 key=lambda n: n == SUMMARY)
  for name in names:
    shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _tag(jobs: list[Job], index: int) -> str:
  job = jobs[index]
  return f"[{index + 1}/{len(jobs)}] {job.plan.source.name} {job.entry.label}"


def run_jobs(argv: tuple[str, ...], jobs: list[Job], workers: int, progress: bool
             ) -> list[tuple[dict, dict | None]]:
  """Runs every job of the report, ``workers`` runs at a time, in job order (a tuned job:
  its tuning runs), except that a tuned job's reported run goes ahead of every run not yet
  started as soon as its tuning runs are in, so rows finish one after another and a report
  stopped early has whole rows.  Returns ``(summary, chosen)`` per job, in order
  (``chosen``: the tuned values, None for a job not tuned).  A failed run cancels the runs
  not yet started and its error is raised."""
  results: dict[int, tuple[dict, dict | None]] = {}
  scores: dict[int, list] = {i: [] for i in range(len(jobs))}
  waiting = collections.deque((i, k, None) for i, job in enumerate(jobs)
                              for k in (range(len(job.tuning)) if job.tuning else [None]))
  ready: collections.deque = collections.deque()   # reported runs of tuned jobs
  with workers_lib.pool(workers) as ex:
    pending = {}

    def fill():
      while len(pending) < workers and (ready or waiting):
        index, tuning, chosen = (ready or waiting).popleft()
        f = ex.submit(run_task, argv, index, tuning, chosen, progress)
        pending[f] = (index, tuning, chosen)

    try:
      fill()
      while pending:
        done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for f in done:
          i, k, chosen = pending.pop(f)
          s, job = f.result(), jobs[i]
          if k is None:
            results[i] = (s, chosen)
            print(f"{_tag(jobs, i)}: final return {s['final_return_mean']}", file=sys.stderr)
            continue
          combo = job.tuning[k][0]
          print(f"{_tag(jobs, i)} tune {tune_lib.combo_slug(combo)}: final return "
                f"{s['final_return_mean']}", file=sys.stderr)
          scores[i].append((k, combo, s["final_return_mean"]))
          if len(scores[i]) == len(job.tuning):   # in grid order, so ties break as before
            ordered = [(c, r) for _, c, r in sorted(scores[i], key=lambda t: t[0])]
            ready.append((i, None, tune_lib.best(ordered)))
        fill()
    except BaseException:
      ex.shutdown(wait=False, cancel_futures=True)
      raise
  return [results[i] for i in range(len(jobs))]


def _main(argv) -> int:
  _parsed.cache_clear()   # plan afresh on every call (a test may call main twice)
  args, jobs = _parsed(tuple(argv))
  check_out(args)
  out = cli.prepare_out_dir(args.out)   # created and proved writable before any training
  if args.overwrite:
    remove_report(out)
  progress = not args.quiet and args.jobs == 1   # workers' progress bars would interleave
  manifest, missing = [], []
  results = (finished_runs(jobs) if args.table_only
             else run_jobs(tuple(argv), jobs, args.jobs, progress))
  for job, (s, chosen) in zip(jobs, results):
    if s is None:
      missing.append(f"{job.plan.source.name} {job.entry.label}")
      continue
    out_dir = job.plan.out     # a tuned job's run writes to the same directory
    if chosen is not None:
      s["tuned"] = chosen
      write_json(os.path.join(out_dir, "summary.json"), s)
    manifest.append({"dir": os.path.relpath(out_dir, args.out), "label": job.entry.label,
                     "settings_key": s["settings_key"],
                     **({"role": job.role} if job.role is not None else {})})
  write_json(os.path.join(out, MANIFEST), manifest)
  if missing:
    print(f"{PROG}: --table-only: {len(missing)} of {len(jobs)} rows not finished, left out: "
          f"{', '.join(missing)}", file=sys.stderr)
  df = write_report(args.out, missing)
  print(to_markdown(df))
  return cli.EXIT_OK


def main(argv=None) -> int:
  """Entry point of ``lpg-report``; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.run_cli(PROG, lambda: _main(argv), debug="--debug" in argv)


if __name__ == "__main__":
  sys.exit(main())
