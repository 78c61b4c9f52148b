"""``lpg-ship``: a meta-training run's validated rule, packaged as a shipped artifact.

    lpg-ship --run runs/recipe --name lpg_recipe_cpu [--out artifacts] [--rule rule_best.pkl]
             [--selected-on ENV,...] [--meta-test-lifetimes N,...] [--overwrite]

Writes, into ``--out``:

* ``NAME.pkl``: the run's best-validated rule (``rule_best.pkl``, or ``--rule``), its
  ``extras["meta_test"]`` the settings the validation that chose it picked per agent kind
  (``meta_train.validation.chosen_settings``; recomputed from the run's metrics, so runs
  made before the job recorded them ship them too), its metadata naming the run's
  validation tasks;
* ``NAME.json``: what a reader needs without loading it: command(s), commit, recipe (the
  full train config), training envs, validation tasks (they chose the rule, so they are
  not a test of it), meta-updates, agent-steps, wall time, hardware, the file's sha256,
  the meta-test settings, the validation at which it was chosen, the run's totals;
* ``NAME_train/``: ``config.json`` (the run's record), ``metrics.jsonl.gz`` (its metrics,
  compressed), ``scores.png`` (training and validation scores per task) and
  ``meta_training.png`` (the population's mean normalised return, or an ES population's
  fitness).

``--meta-test-lifetimes 200,1000,4000``: the step size that suits an agent depends on how
many updates it makes, and the run validated on short lifetimes; this validates the shipped
rule again on the run's validation tasks with lifetimes of each length, at every candidate
step size (``meta_train.validation.lifetime_settings``), and records the choices as
``meta_test[kind]["by_lifetime"]``: ``lpg-apply`` uses the one of the length nearest its
run's (a 5M-step MinAtar run makes ~3,900 updates).  Only validation tasks decide.

``--selected-on``: tasks on which this rule (or its run's recipe) was preferred to other
candidates after meta-training (e.g. MinAtar games that decided between two runs); they are
added to the artifact's ``validate_envs`` (so ``lpg-report`` marks them ``validation``, not
``test``) and listed as ``selected_on``.

Nothing is written before every input is checked; an existing ``NAME.pkl`` is refused
without ``--overwrite``.  Exit 0 on success, 2 on bad input (one line, no traceback).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import sys

from lpg import cli
from lpg.cli import UserError

PROG = "lpg-ship"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _load_run(run: str, rule_name: str):
  """``(record, config, loaded rule, metrics lines)`` of a finished run; one-line errors."""
  from lpg.artifact import ArtifactError, load_rule
  from meta_train import run_dir
  from meta_train.config import TrainConfig
  from meta_train.plots import read_metrics
  if not os.path.isdir(run):
    raise UserError(f"--run {run} is not a directory; give an lpg-meta-train --out directory")
  record = run_dir.read_record(run)
  rule_path = os.path.join(run, rule_name)
  if not os.path.isfile(rule_path):
    hint = (" (the run never validated: pass --rule rule.pkl to ship its last rule, "
            "which no validation chose)" if rule_name == "rule_best.pkl" else "")
    raise UserError(f"{rule_path} does not exist{hint}")
  try:
    loaded = load_rule(rule_path)
    config = TrainConfig.from_dict(record["config"])
  except (ArtifactError, ValueError, TypeError) as e:
    raise UserError(f"{rule_path}: {cli.one_line(e)}") from None
  metrics = os.path.join(run, run_dir.METRICS)
  lines = read_metrics(metrics) if os.path.isfile(metrics) else []
  return record, config, loaded, lines


def _validation_line(lines: list[dict], step: int | None) -> dict | None:
  found = [l for l in lines if l.get("validation") and l.get("meta_update") == step]
  return found[-1] if found else None


def _chosen(run: str, config, loaded, step: int | None) -> dict:
  """The rule's meta-test settings, with the validation's choice where it can be made."""
  from meta_train import validation
  settled = (loaded.extras or {}).get("meta_test") or {}
  path = os.path.join(run, validation.BASELINES)
  if step is None or not os.path.isfile(path):
    return settled
  with open(path) as f:
    refs = {k: tuple(v) for k, v in json.load(f).items()}
  chosen = validation.settings_at(os.path.join(run, "metrics.jsonl"), step, config, refs)
  return validation.with_chosen(settled, chosen, step)


def _rule_inputs(rule_config) -> list[str]:
  """The ``--rule-inputs`` names the rule was trained with (``[]``: the original LPG's)."""
  from meta_train.cli import RULE_INPUTS
  return [n for n, field in RULE_INPUTS.items() if getattr(rule_config, field, False)]


def _rule_progress(meta: dict, line: dict | None) -> dict:
  """The rule's own meta-updates, agent-steps and wall time: where the validation that chose
  it ran (the run went on after it: ``run_totals``), else the artifact's metadata."""
  if line is None:
    return {k: meta.get(k) for k in ("meta_updates", "agent_steps", "wall_time_s")}
  return {"meta_updates": line["meta_update"], "agent_steps": line.get("agent_steps"),
          "wall_time_s": line.get("wall_time_s")}


def _totals(lines: list[dict]) -> dict:
  last = [l for l in lines if "meta_update" in l]
  if not last:
    return {}
  return {k: last[-1].get(k) for k in ("meta_update", "agent_steps", "wall_time_s")}


def sidecar(name: str, record: dict, config, loaded, chosen: dict, line: dict | None,
            lines: list[dict], sha256: str, rule_checksum: str) -> dict:
  """The ``NAME.json`` metadata (plain JSON); ``sha256`` of the file, ``rule_checksum``
  the artifact's own (``LoadedRule.checksum``); ``loaded`` the shipped rule (its metadata
  holds the validation tasks, ``--selected-on`` included)."""
  meta = loaded.metadata
  return {
      "name": name, "file": f"{name}.pkl", "checksum_sha256": sha256,
      "rule_checksum": rule_checksum,
      "command": meta.get("command"), "commands": meta.get("commands"),
      "git_commit": meta.get("git_commit"), "envs": list(config.envs),
      "validate_envs": meta["validate_envs"], "selected_on": meta.get("selected_on", []),
      "validation_note": "the validate_envs chose this rule: they are not a test of it",
      "meta_optimizer": config.meta_optimizer, "rule_inputs": _rule_inputs(loaded.config),
      **_rule_progress(meta, line), "hardware": meta.get("hardware"),
      "jax": meta.get("jax"), "date": meta.get("date"),
      "validation": None if line is None else {
          "meta_update": line["meta_update"], "score": line.get("validation_score"),
          "tasks": {t: {k: v for k, v in m.items() if k != "grid_returns"}
                    for t, m in line["validation"].items()}},
      "run_totals": _totals(lines), "meta_test": chosen,
      "rule_config": dataclasses.asdict(loaded.config),
      "train_config": record["config"],
  }


def _write_train_dir(run: str, target: str) -> None:
  from meta_train import plots, run_dir
  os.makedirs(target, exist_ok=True)
  shutil.copyfile(os.path.join(run, run_dir.RECORD), os.path.join(target, "config.json"))
  src = os.path.join(run, run_dir.METRICS)
  with open(src, "rb") as f, open(os.path.join(target, "metrics.jsonl.gz"), "wb") as raw:
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:   # same run, same bytes
      shutil.copyfileobj(f, g)
  import matplotlib
  matplotlib.use("Agg")
  plots.plot_scores(src, os.path.join(target, "scores.png"))
  plots.plot_training(src, os.path.join(target, "meta_training.png"))


def selected_envs(spec: str) -> tuple[str, ...]:
  """``--selected-on`` (env names or suites, comma list; empty: none) -> env names."""
  from meta_train.cli import expand_envs
  if not spec.strip():
    return ()
  try:
    return expand_envs(spec, "--selected-on")
  except ValueError as e:
    raise UserError(f"--selected-on: {cli.one_line(e)}") from None


def parse_lifetimes(spec: str) -> tuple[int, ...]:
  """``--meta-test-lifetimes`` (comma list of update counts; empty: none) -> sorted counts."""
  if not spec.strip():
    return ()
  try:
    values = sorted({int(x) for x in spec.split(",")})
  except ValueError:
    values = [0]
  if values[0] < 1:
    raise UserError(f"--meta-test-lifetimes must be positive whole numbers of updates, comma "
                    f"separated (e.g. 200,1000,4000), got {spec!r}")
  return tuple(values)


def with_lifetimes(run: str, config, loaded, chosen: dict, lifetimes: tuple[int, ...]) -> dict:
  """``chosen`` with each agent kind's ``by_lifetime`` (``validation.lifetime_settings`` of
  the shipped rule on the run's validation tasks, lifetimes of ``lifetimes`` updates)."""
  from lpg.rule import LPGRule
  from meta_train import validation
  if not lifetimes:
    return chosen
  if loaded.family != "lpg" or not config.validate_envs:
    raise UserError("--meta-test-lifetimes needs an LPG rule from a run that validated "
                    f"(this one: family {loaded.family}, validation tasks "
                    f"{list(config.validate_envs) or 'none'})")
  refs = validation.baselines(tuple(config.validate_envs), run)
  progress = lambda n: print(f"{PROG}: validating on {n}-update lifetimes "
                             f"({lifetimes.index(n) + 1} of {len(lifetimes)})", file=sys.stderr)
  found = validation.lifetime_settings(config, LPGRule(config.rule), loaded.params, lifetimes,
                                       refs, on_lifetime=progress)
  out = {k: dict(v) for k, v in chosen.items()}
  for kind, entries in found.items():
    out.setdefault(kind, {})["by_lifetime"] = entries
  return out


def ship(run: str, name: str, out: str, rule_name: str = "rule_best.pkl",
         overwrite: bool = False, selected_on: tuple[str, ...] = (),
         lifetimes: tuple[int, ...] = ()) -> dict:
  """Writes the shipped rule, its metadata and its training record; returns the metadata."""
  from lpg.artifact import atomic_write, save_rule
  if not NAME.match(name):
    raise UserError(f"--name {name!r}: use letters, digits, - and _ (e.g. lpg_recipe_cpu)")
  record, config, loaded, lines = _load_run(run, rule_name)
  pkl = os.path.join(out, f"{name}.pkl")
  if os.path.exists(pkl) and not overwrite:
    raise UserError(f"{pkl} exists; pass --overwrite to replace it or choose another --name")
  step = loaded.metadata.get("validated_at")
  chosen = with_lifetimes(run, config, loaded, _chosen(run, config, loaded, step), lifetimes)
  meta = dict(loaded.metadata, name=name, shipped_from=os.path.abspath(run),
              validate_envs=list(dict.fromkeys((*config.validate_envs, *selected_on))),
              selected_on=list(selected_on))
  os.makedirs(out, exist_ok=True)
  checksum = save_rule(pkl, loaded.params, loaded.config, meta, family=loaded.family,
            extras=dict(loaded.extras or {}, meta_test=chosen))
  with open(pkl, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  data = sidecar(name, record, config, loaded._replace(metadata=meta), chosen,
                 _validation_line(lines, step), lines, sha, checksum)
  atomic_write(os.path.join(out, f"{name}.json"), json.dumps(data, indent=2).encode())
  _write_train_dir(run, os.path.join(out, f"{name}_train"))
  return data


def build_parser() -> cli.Parser:
  p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--run", required=True, help="an lpg-meta-train --out directory")
  p.add_argument("--name", required=True, help="the artifact's name (NAME.pkl)")
  p.add_argument("--out", default="artifacts", help="where to write (default artifacts)")
  p.add_argument("--rule", default="rule_best.pkl",
                 help="which rule of the run (default rule_best.pkl, the best-validated)")
  p.add_argument("--selected-on", default="", metavar="ENV,...",
                 help="tasks (names or suites) that chose this rule among candidates after "
                      "meta-training; they "
                      "are marked validation (not test) in every report")
  p.add_argument("--meta-test-lifetimes", default="", metavar="N,...",
                 help="also choose the meta-test step size by the run's validation on "
                      "lifetimes of N updates (every candidate step size), e.g. 200,1000,4000; "
                      "lpg-apply then uses the choice of the lifetime nearest its own")
  p.add_argument("--overwrite", action="store_true", help="replace an existing NAME.pkl")
  p.add_argument("--debug", action="store_true", help="print tracebacks of user errors")
  return p


def _main(argv) -> int:
  args = build_parser().parse_args(argv)
  lifetimes = parse_lifetimes(args.meta_test_lifetimes)
  data = ship(args.run, args.name, args.out, args.rule, args.overwrite,
              selected_envs(args.selected_on), lifetimes)
  v = data["validation"] or {}
  by_life = {k: {e["updates"]: e["learning_rate"] for e in s["by_lifetime"]}
             for k, s in data["meta_test"].items() if s.get("by_lifetime")}
  print(f"{PROG}: {os.path.join(args.out, data['file'])}: {data['meta_updates']} meta-updates, "
        f"validation score {v.get('score')} at meta-update {v.get('meta_update')}; meta-test "
        f"settings {json.dumps({k: s.get('learning_rate') for k, s in data['meta_test'].items()})}"
        + (f"; by lifetime (updates: step size) {json.dumps(by_life)}" if by_life else ""),
        file=sys.stderr)
  return cli.EXIT_OK


def main(argv=None) -> int:
  """Entry point of ``lpg-ship``; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.run_cli(PROG, lambda: _main(argv), debug="--debug" in argv)


if __name__ == "__main__":
  sys.exit(main())
