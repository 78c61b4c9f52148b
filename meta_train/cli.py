"""``lpg-meta-train``: the meta-training batch job.

    lpg-meta-train --preset smoke                       # a few minutes on 2 CPU cores
    lpg-meta-train --preset cpu --envs all --out runs/cpu
    lpg-meta-train --out runs/cpu --resume              # continue a killed run

Writes ``DIR/config.json`` (settings and command history), ``DIR/metrics.jsonl``
(one JSON object per logging interval), ``DIR/checkpoint-<step>.npz`` (atomic, the
last few kept) and ``DIR/rule.pkl`` (the rule, safe to share, exported at every
checkpoint and at the end).  Everything is validated before anything is written.
``--resume`` continues a run bit for bit; it refuses flags that would change what
the run computes and applies those that only change how long or how often.
SIGINT/SIGTERM finish the meta-update in flight, checkpoint and exit.  User
errors print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import subprocess
import sys
from typing import NamedTuple

from lpg import cli
from lpg.cli import UserError

PROG = "lpg-meta-train"
# Flags a resume may change (flag attribute -> TrainConfig field); all others are fixed.
CHANGEABLE = ("num_updates", "checkpoint_every", "log_every", "updates_per_call",
              "max_consecutive_skips")
# Flags that fix what a run computes: given on --resume they must match the run.
FIXED = ("preset", "envs", "seed", "meta_lr", "agents_per_env", "agent_chunk", "init_rule",
         "validate_envs", "validate_every", "validate_updates", "validate_seeds",
         "lifetime_updates", "lifetime_updates_min", "meta_optimizer", "es_population",
         "es_sigma", "es_entropy_coef", "family", "rule_inputs", "num_inner", "num_envs",
         "curriculum")
NEW_RUN_ONLY = ("validate_every", "validate_updates", "validate_seeds", "lifetime_updates",
            "lifetime_updates_min", "meta_optimizer", "es_population", "es_sigma",
            "es_entropy_coef", "curriculum")


# Counts of validation and lifetime length: (flag, type, help).
_COUNT_FLAGS = (
    ("--validate-every", cli.nonnegative_int,
     "meta-updates between held-out validations (and one at the end); 0: off"),
    ("--validate-updates", cli.positive_int, "agent updates of one validation lifetime"),
    ("--validate-seeds", cli.positive_int, "validation lifetimes per task"),
    ("--lifetime-updates", cli.positive_int,
     "agent updates of one training lifetime (the longest, with --lifetime-updates-min)"),
    ("--lifetime-updates-min", cli.nonnegative_int,
     "draw each lifetime's length log-uniformly from [this, --lifetime-updates] (0: fixed)"),
)


def build_parser() -> argparse.ArgumentParser:
  from meta_train.config import PRESETS
  p = cli.Parser(prog=PROG, description="Meta-train an LPG update rule (see README).")
  p.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default smoke)")
  p.add_argument("--envs", default=None,
                 help="a suite (all, tabular, random, chain) or a comma list of env names")
  p.add_argument("--num-updates", type=cli.nonnegative_int, default=None,
                 help="meta-updates to run in total")
  p.add_argument("--agents-per-env", type=cli.positive_int, default=None,
                 help="lifetimes per training env")
  p.add_argument("--seed", type=cli.integer, default=None)
  p.add_argument("--meta-lr", type=cli.positive_float, default=None,
                 help="Adam step size of the rule")
  p.add_argument("--meta-optimizer", choices=("gradient", "es"), default=None,
                 help="gradient: truncated meta-gradient; es: evolution strategies over whole "
                      "lifetimes (default: the preset's)")
  p.add_argument("--family", choices=FAMILIES, default=None,
                 help="lpg: an LPG rule; metagenrl: a MetaGenRL objective meta-trained through "
                      "a critic (presets mgenrl-tiny, mgenrl-cpu; default the preset's family)")
  p.add_argument("--es-population", type=cli.integer, default=None,
                 help="ES members per generation (even: antithetic pairs)")
  p.add_argument("--es-sigma", type=cli.finite_float, default=None,
                 help="ES perturbation scale (> 0)")
  p.add_argument("--es-entropy-coef", type=cli.finite_float, default=None,
                 help="ES fitness bonus for the agents' policy entropy / log|A| (>= 0; "
                      "default 0: return only)")
  p.add_argument("--out", default=None, help="run directory (default runs/<preset>-<time>)")
  p.add_argument("--resume", action="store_true", help="continue the run in --out")
  p.add_argument("--checkpoint-every", type=cli.nonnegative_int, default=None,
                 help="meta-updates per checkpoint (0: only at the end)")
  p.add_argument("--log-every", type=cli.positive_int, default=None,
                 help="meta-updates per metrics line")
  p.add_argument("--updates-per-call", type=cli.positive_int, default=None,
                 help="meta-updates scanned in one compiled call")
  p.add_argument("--agent-chunk", type=cli.nonnegative_int, default=None,
                 help="lifetimes per sequential gradient chunk (memory ~ chunk; 0 = all)")
  p.add_argument("--time-limit", type=cli.positive_float, default=None,
                 help="stop cleanly (checkpoint + rule) after this many seconds; resume later")
  p.add_argument("--init-rule", default=None,
                 help="start the rule from this artifact (its config must match the preset's)")
  p.add_argument("--validate-envs", default=None,
                 help="held-out validation tasks: a suite or comma list of env names, none of "
                      "--envs (default: the preset's, less any training env)")
  for flag, kind, text in _COUNT_FLAGS:
    p.add_argument(flag, type=kind, default=None, help=text)
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator", default=None,
                 help="HOST:PORT of process 0, to join a multi-host run (jax.distributed)")
  p.add_argument("--num-processes", type=cli.positive_int, default=None,
                 help="processes in a multi-host run")
  p.add_argument("--process-id", type=cli.nonnegative_int, default=None,
                 help="this process's index (0 writes)")
  p.add_argument("--max-consecutive-skips", type=cli.positive_int, default=None,
                 help="stop after this many non-finite meta-updates in a row (default 10)")
  _add_recipe_flags(p)
  return p


# --rule-inputs names -> LPGConfig fields (FLAGS.md).
RULE_INPUTS = {"lifetime": "lifetime_inputs", "signlog": "signlog_reward",
               "normalise": "normalise_reward", "value": "value_inputs"}


def rule_inputs(text: str) -> tuple[str, ...]:
  """``--rule-inputs``: a comma list of ``RULE_INPUTS`` names or ``none`` -> names in
  ``RULE_INPUTS`` order (``()`` for none)."""
  parts = [s.strip() for s in text.split(",") if s.strip()]
  if parts == ["none"]:
    return ()
  bad = [s for s in parts if s not in RULE_INPUTS]
  if bad or not parts:
    raise argparse.ArgumentTypeError(
        f"{text!r}: give a comma list of {', '.join(RULE_INPUTS)}, or none")
  return tuple(n for n in RULE_INPUTS if n in parts)


def _add_recipe_flags(p) -> None:
  p.add_argument("--rule-inputs", type=rule_inputs, default=None,
                 help=f"the rule's optional inputs: a comma list of {', '.join(RULE_INPUTS)}, "
                      "or none (default: the preset's)")
  p.add_argument("--num-inner", type=cli.positive_int, default=None,
                 help="K, inner updates differentiated through per meta-update (K > 5 "
                      "rematerialises them)")
  p.add_argument("--num-envs", type=cli.positive_int, default=None,
                 help="B, parallel envs of each training and validation agent (default: the "
                      "preset's); fewer envs with longer lifetimes keep the agent-steps and "
                      "give the rule more updates per lifetime")
  p.add_argument("--curriculum", choices=("off", "learnability", "regret"), default=None,
                 help="how procgen family envs in --envs draw each lifetime's level: level "
                      "replay by learnability or regret (default: the preset's, off)")


def recipe_value(config, flag: str):
  """The run's value of a flag that sets a nested config field (None: not such a flag)."""
  if flag == "rule_inputs":
    return tuple(n for n, f in RULE_INPUTS.items() if getattr(config.rule, f, False))
  if flag in ("num_inner", "num_envs"):
    return getattr(config.meta, flag)
  return None


def recipe_overrides(args, config) -> dict:
  """``TrainConfig`` overrides of ``--rule-inputs``, ``--num-inner`` and ``--num-envs``."""
  out = {}
  if args.rule_inputs is not None:
    if not all(hasattr(config.rule, f) for f in RULE_INPUTS.values()):
      raise UserError("--rule-inputs sets the inputs of an LPG rule; this preset's rule has none "
                      "(use an LPG preset, or drop --rule-inputs)")
    out["rule"] = dataclasses.replace(
        config.rule, **{f: n in args.rule_inputs for n, f in RULE_INPUTS.items()})
  if args.num_inner is not None:
    out["meta"] = dataclasses.replace(
        config.meta, num_inner=args.num_inner,
        remat_inner=config.meta.remat_inner or args.num_inner > 5)
  if args.num_envs is not None:
    out["meta"] = dataclasses.replace(out.get("meta", config.meta), num_envs=args.num_envs)
  return out


def expand_envs(spec: str, flag: str = "--envs") -> tuple[str, ...]:
  import envs
  names: list[str] = []
  for part in [s.strip() for s in spec.split(",") if s.strip()]:
    if part in envs.SUITES:
      names.extend(envs.SUITES[part])
    else:
      envs.make(part)  # raises ValueError naming close matches
      names.append(part)
  if not names:
    raise UserError(f"{flag} is empty; give a suite (all, tabular, random, chain) or env names")
  return tuple(dict.fromkeys(names))


FAMILIES = ("lpg", "metagenrl")
DEFAULT_PRESETS = {"lpg": "smoke", "metagenrl": "mgenrl-tiny"}


def _preset(name: str | None, family: str | None = None):
  """``(name, TrainConfig)`` of ``--preset`` (default: ``--family``'s), of ``--family``."""
  from meta_train.config import PRESETS
  name = name or DEFAULT_PRESETS[family or "lpg"]
  if name not in PRESETS:
    raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
  if family is not None and PRESETS[name].family != family:
    same = [n for n, p in PRESETS.items() if p.family == family]
    raise UserError(f"--preset {name} is a {PRESETS[name].family} preset, not {family}; "
                    f"choose one of {', '.join(same)}")
  return name, PRESETS[name]


def validate_envs(spec: str | None, default: tuple[str, ...], train: tuple[str, ...]):
  """The validation tasks: ``spec`` expanded (none may be a training env), or ``default``
  less the training envs."""
  if spec is None:
    return tuple(n for n in default if n not in train)
  names = expand_envs(spec, "--validate-envs")
  overlap = [n for n in names if n in train]
  if overlap:
    raise UserError(f"--validate-envs {','.join(overlap)} {'is a' if len(overlap) == 1 else 'are'}"
                    f" training env{'s' * (len(overlap) > 1)}; held-out validation needs tasks "
                    "outside --envs")
  return names


def make_config(args):
  """The config of a new run: the preset with the flags' overrides."""
  _, config = _preset(args.preset, args.family)
  overrides = {"envs": expand_envs(args.envs if args.envs is not None else ",".join(config.envs))}
  overrides["validate_envs"] = validate_envs(args.validate_envs, config.validate_envs,
                                             overrides["envs"])
  for field in CHANGEABLE + NEW_RUN_ONLY + ("seed", "meta_lr", "agents_per_env", "agent_chunk"):
    if getattr(args, field) is not None:
      overrides[field] = getattr(args, field)
  return dataclasses.replace(config, **overrides, **recipe_overrides(args, config))


def resume_config(args, record: dict, out: str):
  """The saved config with the changeable flags applied: ``(config, {field: (old, new)})``.

  Raises ``UserError`` naming every fixed flag that conflicts with the run.
  """
  from meta_train.config import TrainConfig
  try:
    config = TrainConfig.from_dict(record["config"])
  except (TypeError, ValueError) as e:
    raise UserError(f"--resume: {os.path.join(out, 'config.json')} does not hold a valid config "
                    f"({cli.one_line(e)}); restore it from a backup, or start a new run in a new "
                    "--out") from None
  ran = {"preset": record.get("preset"), "init_rule": record.get("init_rule"),
         **{f: recipe_value(config, f) if recipe_value(config, f) is not None
            else getattr(config, f) for f in FIXED if f not in ("preset", "init_rule")}}
  conflicts = []
  for flag in FIXED:
    value = getattr(args, flag)
    if value is None:
      continue
    if flag in ("envs", "validate_envs"):
      value = expand_envs(value)
    if value != ran[flag]:
      given, shown = ((",".join(x) or "none") if isinstance(x, tuple) else x
                      for x in (getattr(args, flag), ran[flag]))
      conflicts.append(f"--{flag.replace('_', '-')} {given} (the run has {shown})")
  if conflicts:
    raise UserError(f"--resume continues the run in {out} as it was configured: "
                    f"{'; '.join(conflicts)}; drop these flags, or choose a new --out")
  changes = {f: (getattr(config, f), getattr(args, f)) for f in CHANGEABLE
             if getattr(args, f) is not None and getattr(args, f) != getattr(config, f)}
  return dataclasses.replace(config, **{f: new for f, (_, new) in changes.items()}), changes


def git_commit() -> str | None:
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=5)
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None
  except (OSError, subprocess.SubprocessError):
    return None


class Plan(NamedTuple):
  """A validated job: nothing has been written yet."""
  out: str
  config: object            # TrainConfig
  record: dict              # the config.json to write
  restore: bool             # continue from the newest checkpoint (else a fresh start)
  init_rule: str | None     # artifact the rule starts from (fresh starts only)
  notes: tuple[str, ...]    # one-line messages to print once the job starts
  main_process: bool


def plan_run(args, argv: list[str], multi: bool) -> Plan:
  """Validates the flags and the run directory; writes nothing."""
  from meta_train import checkpoint, run_dir
  out = args.out or os.path.join(
      "runs", f"{args.preset or DEFAULT_PRESETS[args.family or 'lpg']}-"
              f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  main_process = not multi or args.process_id == 0
  command = " ".join([PROG] + [shlex.quote(a) for a in argv])
  entry = {"command": command, "date": run_dir.now()}
  if args.resume:
    record = run_dir.read_record(out)
    config, changes = resume_config(args, record, out)
    restore = checkpoint.exists(out)
    notes = [f"no checkpoint yet in {out} (the run stopped before its first): starting it "
             "afresh from its config.json"] if not restore else []
    if changes:
      notes.append("resume changes " + ", ".join(
          f"{f.replace('_', '-')} {a} -> {b}" for f, (a, b) in changes.items()))
      entry["changes"] = {f: list(v) for f, v in changes.items()}
    record = dict(record, config=config.to_dict(),
                  history=run_dir.history(record) + [entry])
    return Plan(out, config, record, restore, record.get("init_rule"), tuple(notes), main_process)
  config = make_config(args)
  note = run_dir.check_new_run_dir(out) if main_process else None
  record = {"config": config.to_dict(), "command": command,
            "preset": _preset(args.preset, args.family)[0],
            "init_rule": args.init_rule, "git_commit": git_commit(), "started": entry["date"],
            "history": [entry]}
  return Plan(out, config, record, False, args.init_rule, (note,) if note else (), main_process)


def run(argv: list[str]) -> int:
  args = build_parser().parse_args(argv)
  multi = any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
  if multi and (args.coordinator is None or args.num_processes is None or args.process_id is None):
    raise UserError("a multi-host run needs all of --coordinator, --num-processes and --process-id")
  if multi and args.out is None:
    raise UserError("a multi-host run needs an explicit --out on a filesystem all hosts share")
  if multi:  # before anything touches a JAX backend (env construction does)
    from meta_train import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  try:
    plan = plan_run(args, argv, multi)
  except ValueError as e:  # invalid config values, unknown env names
    if isinstance(e, UserError):
      raise
    raise UserError(cli.one_line(e)) from None
  from meta_train import job
  return job.run_job(plan, time_limit=args.time_limit, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  from meta_train.checkpoint import CheckpointError
  return cli.run_cli(PROG, lambda: run(argv), extra_errors=(CheckpointError,))


if __name__ == "__main__":
  sys.exit(main())
