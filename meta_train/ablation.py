"""``lpg-ablation``: the recipe ablation (issue 16), reproducible and resumable.

    lpg-ablation run --scale cpu --variants base,lifetime,es,procgen --seeds 0,1 \\
        --out runs/ablation [--budget-s 1800] [--jobs 1] [--dry-run]
    lpg-ablation report --out runs/ablation --md artifacts/ablations/README-table.md \\
        --png artifacts/ablations/curves.png
    lpg-ablation rescore --out runs/ablation [--seed 1000] [--validate-seeds 4]
        # every run's best rule on one common validation (meta_train.ablation_rescore)

A *variant* is a named list of ``lpg-meta-train`` flags (``VARIANTS``) layered on a
*scale* (``SCALES``: a preset, the base recipe's training worlds and the validation
settings).  Equal compute: every run of a scale gets the same wall-time budget
(``--time-limit``, counted over all its sittings) and the same held-out validation
(tasks, interval in wall time, lifetimes, seeds); the report shows the agent-steps and
wall time each run actually used.  ES variants get the scale's ``es`` flags (population,
lifetime lengths and a validation interval in generations chosen to fall at about the
same wall-time interval as the gradient runs').

Each (variant, seed) is the run directory ``OUT/<variant>-s<seed>``; its output goes to
``OUT/logs/<variant>-s<seed>.log``.  A run is *done* when its newest checkpoint has used
the budget or reached the preset's meta-updates; done runs are skipped, started ones are
continued with ``--resume --time-limit <budget left>``, so a campaign killed at any point
is finished by running the same command again.  Runs are started under ``nice`` in their
own session (with ``--jobs`` above 1, each with XLA's CPU backend on one thread);
SIGINT/SIGTERM to ``lpg-ablation`` is forwarded once to each run, which
checkpoints and exits.  A variant whose flag this ``lpg-meta-train`` does not know fails
alone with a one-line message; the others run.  Exit status: 0 if every run is done, 1 if
any failed, 2 for bad input (nothing started).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from lpg import cli
from lpg.cli import UserError
from meta_test.workers import single_thread_flags
from meta_train.config import RECIPE_VALIDATION

PROG = "lpg-ablation"
TRAIN_PROG = "lpg-meta-train"
# What a run executes (the trainer of this checkout, like the lpg-meta-train script).
TRAINER = (sys.executable, "-m", "meta_train.cli")
PROCGEN = "procgen/tabular,procgen/random,procgen/chain"
# The validation tasks of the recipe presets, so an ablation validates as the job it ablates.
VALIDATION_SUITE = ",".join(RECIPE_VALIDATION)
RUN_NAME = re.compile(r"^(?P<variant>[A-Za-z0-9_.]+)-s(?P<seed>-?\d+)$")

Args = tuple[tuple[str, "str | None"], ...]  # (flag, value or None for a switch)


@dataclasses.dataclass(frozen=True)
class Scale:
  """Where a variant's flags are layered: the preset and what every variant shares.

  ``worlds``: the base recipe's training envs (``{worlds}`` in a variant);
  ``lifetime_min``: ``{lifetime_min}``, the shortest drawn lifetime of lifetime-aware
  variants; ``es``: flags every ES variant gets before its own.
  """
  preset: str
  worlds: str
  validate_envs: str
  validate_every: int
  validate_updates: int
  validate_seeds: int
  budget_s: float
  lifetime_min: int
  es: Args = ()


SCALES: dict[str, Scale] = {
    # CI-sized: the tiny preset's chain, a few meta-updates in seconds (the test's scale).
    "tiny": Scale("tiny", "chain/short", "chain/long", 1, 8, 1, 5.0, 4,
                  es=(("--es-population", "4"),)),
    # The cpu preset (LSTM-64, 60 lifetimes, ~5 s per meta-update on 2 cores): validation
    # every ~2 min; an ES generation of 16 members x 15 worlds x N in [20, 100] updates
    # takes ~40 s, so ES validates every 3.
    "cpu": Scale("cpu", "all", VALIDATION_SUITE, 25, 200, 2, 1800.0, 50,
                 es=(("--es-population", "16"), ("--lifetime-updates", "100"),
                     ("--lifetime-updates-min", "20"), ("--validate-every", "3"))),
    # The gpu / es-gpu presets' scale (LSTM-256; 0.5 s per meta-update on an H100), with the
    # issue's unseen MinAtar games added to the held-out suite.
    "gpu": Scale("gpu", "all", VALIDATION_SUITE + ",Breakout,SpaceInvaders", 100, 800, 2,
                 3600.0, 100,
                 es=(("--es-population", "128"), ("--lifetime-updates", "500"),
                     ("--lifetime-updates-min", "50"), ("--validate-every", "10"))),
}

_LIFETIME: Args = (("--rule-inputs", "lifetime"), ("--lifetime-updates-min", "{lifetime_min}"))
_PROCGEN: Args = (("--envs", "{worlds}," + PROCGEN),)
# Regret, not learnability: lpg-meta-train's learnability needs per-level optimal returns,
# which procgen/random lacks, and the variant must differ from procgen in the curriculum only.
_CURRICULUM: Args = _PROCGEN + (("--curriculum", "regret"),)
VARIANTS: dict[str, Args] = {
    "base": (),                                   # today's recipe: the named worlds
    "lifetime": _LIFETIME,                        # + lifetime (n/N) inputs, drawn lengths
    "es": (("--meta-optimizer", "es"),),          # evolution strategies
    "procgen": _PROCGEN,                          # + procedurally generated worlds
    "curriculum": _CURRICULUM,                    # + a regret curriculum over them
    "norm": (("--rule-inputs", "signlog,normalise"),),  # normalised reward inputs
    "k20": (("--num-inner", "20"),),              # 20 inner updates per meta-gradient
    # ES with norm's inputs: the combination the first campaign pointed to, and the winner
    # of the second (artifacts/ablations/README.md; --preset recipe-cpu).
    "esnorm": (("--meta-optimizer", "es"), ("--rule-inputs", "signlog,normalise")),
    # esnorm + an entropy bonus in the ES fitness: ES rules drive MinAtar agents' policy
    # entropy to ~0 within ~500 updates and stop learning (artifacts/lpg_recipe_cpu_report/);
    # 0.1 kept Breakout's entropy at 0.8 in a 100-generation fine-tune of lpg_recipe_cpu.
    "esent": (("--meta-optimizer", "es"), ("--rule-inputs", "signlog,normalise"),
              ("--es-entropy-coef", "0.1")),
    # The combination to confirm (edit here, or --define best='...'):
    "best": _CURRICULUM + (("--rule-inputs", "lifetime,signlog,normalise"),
                           ("--lifetime-updates-min", "{lifetime_min}")),
}


# ------------------------------------------------------------------- variants
def parse_variant(text: str) -> Args:
  """``'--flag value --switch ...'`` as ``((flag, value), (switch, None), ...)``."""
  try:
    tokens = shlex.split(text)
  except ValueError as e:
    raise UserError(f"--define {text!r}: {e}; quote it like NAME='--flag value ...'") from None
  pairs: list[tuple[str, str | None]] = []
  for token in tokens:
    if token.startswith("--"):
      pairs.append((token, None))
    elif pairs and pairs[-1][1] is None:
      pairs[-1] = (pairs[-1][0], token)
    else:
      raise UserError(f"--define {text!r}: {token!r} is not a --flag or a flag's value; "
                      "write NAME='--flag value ...'")
  return tuple(pairs)


def variants_with(defines: list[str]) -> dict[str, Args]:
  """``VARIANTS`` with each ``NAME=FLAGS`` of ``--define`` added or replacing one."""
  out = dict(VARIANTS)
  for d in defines:
    name, sep, flags = d.partition("=")
    if not sep or not RUN_NAME.match(f"{name}-s0"):
      raise UserError(f"--define {d!r}: write NAME='--flag value ...' with NAME of letters, "
                      "digits, _ and .")
    out[name] = parse_variant(flags)
  return out


def train_args(scale: Scale, variant: Args, seed: int, out: str, budget_s: float) -> list[str]:
  """The ``lpg-meta-train`` arguments of a fresh run of ``variant`` at ``scale``."""
  fields = {"worlds": scale.worlds, "lifetime_min": scale.lifetime_min}
  flags: dict[str, str | None] = {
      "--preset": scale.preset, "--envs": scale.worlds, "--seed": str(seed),
      "--validate-envs": scale.validate_envs, "--validate-every": str(scale.validate_every),
      "--validate-updates": str(scale.validate_updates),
      "--validate-seeds": str(scale.validate_seeds)}
  if ("--meta-optimizer", "es") in variant:
    flags.update(scale.es)
  flags.update((f, None if v is None else v.format(**fields)) for f, v in variant)
  flags.update({"--time-limit": f"{budget_s:g}", "--out": out, "--no-progress": None})
  return [t for f, v in flags.items() for t in ((f,) if v is None else (f, v))]


def unknown_flags(args: list[str]) -> list[str]:
  """The flags in ``args`` that this checkout's ``lpg-meta-train`` does not define."""
  from meta_train.cli import build_parser
  known = build_parser()._option_string_actions  # noqa: SLF001 (argparse's own table)
  return [a for a in args if a.startswith("--") and a.split("=")[0] not in known]


# ---------------------------------------------------------------------- runs
@dataclasses.dataclass(frozen=True)
class Run:
  """One (variant, seed): its directory, what to execute, and why (or why not)."""
  name: str
  path: str
  action: str                 # new | resume | done | failed
  argv: tuple[str, ...] = ()  # lpg-meta-train arguments
  note: str = ""

  def command(self) -> str:
    return shlex.join(["nice", "-n", "10", TRAIN_PROG, *self.argv])


def progress(path: str) -> tuple[float, int]:
  """``(wall seconds, meta-update)`` of the newest readable checkpoint in ``path``."""
  from meta_train import checkpoint
  for _, ckpt in reversed(checkpoint.list_checkpoints(path)):
    try:
      header = checkpoint.read_header(ckpt)
    except checkpoint.CheckpointError:
      continue
    return float(header.get("wall_time_s", 0.0)), int(header["step"])
  return 0.0, 0


def _settings(args: list[str]) -> list[str]:
  """``args`` less ``--time-limit`` (the budget may grow) and ``--out`` (may be spelt anew)."""
  drop = {i + d for i, a in enumerate(args) if a in ("--time-limit", "--out") for d in (0, 1)}
  return [a for i, a in enumerate(args) if i not in drop]


def plan_run(name: str, path: str, args: list[str], budget_s: float) -> Run:
  """What to do with the run in ``path``: start it, continue it, or nothing."""
  from meta_train import run_dir
  unknown = unknown_flags(args)
  if unknown:
    return Run(name, path, "failed", tuple(args), note=(
        f"{TRAIN_PROG} does not know {', '.join(unknown)} (not in this checkout yet); "
        "update it, or drop the variant"))
  record_path = os.path.join(path, run_dir.RECORD)
  if not os.path.isfile(record_path):
    return Run(name, path, "new", tuple(args))
  try:
    with open(record_path) as f:
      record = json.load(f)
    started = shlex.split(record["command"])[1:]
    num_updates = int(record["config"]["num_updates"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    return Run(name, path, "failed", note=f"{record_path} is unreadable ({cli.one_line(e)}); "
               "move the run away and start again")
  if _settings(started) != _settings(args):
    return Run(name, path, "failed", note=(
        f"{path} was started as `{TRAIN_PROG} {shlex.join(started)}`, not with this variant's "
        "flags; move it away, or choose another --out"))
  wall, step = progress(path)
  left = budget_s - wall
  if step >= num_updates or left <= 0:
    return Run(name, path, "done", note=f"{step} meta-updates, {wall:.0f} s")
  return Run(name, path, "resume", ("--out", path, "--resume", "--time-limit", f"{left:.0f}",
                                    "--no-progress"), note=f"{wall:.0f} s used, {left:.0f} s left")


def plan_campaign(args) -> list[Run]:
  scale = SCALES[args.scale]
  variants = variants_with(args.define)
  runs = []
  for variant in args.variants:
    for seed in args.seeds:
      name = f"{variant}-s{seed}"
      path = os.path.join(args.out, name)
      runs.append(plan_run(name, path, train_args(scale, variants[variant], seed, path,
                                                  args.budget_s), args.budget_s))
  return runs


# ----------------------------------------------------------------- executing
class _Interrupt:
  """SIGINT/SIGTERM to the runner: remember it; the loop forwards it to the runs once."""

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    self.signal = signum


def _last_line(log: str) -> str:
  try:
    with open(log, errors="replace") as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    return ""
  errors = [l for l in lines if "error" in l.lower()]
  return (errors or lines or [""])[-1]


def run_env(environ: dict[str, str], shared: bool) -> dict[str, str]:
  """The environment of a run: ``environ``, and where other runs share the machine
  (``shared``) XLA's CPU backend on one thread (as ``lpg-report --jobs``'s workers) and no
  run taking all of an accelerator's memory up front."""
  env = dict(environ)
  if shared:
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["XLA_FLAGS"] = single_thread_flags(env.get("XLA_FLAGS", ""))
  return env


def _start(run: Run, log_dir: str, shared: bool) -> subprocess.Popen:
  """Starts ``run`` (``shared``: other runs share the machine; ``run_env``)."""
  nice = ["nice", "-n", "10"] if shutil.which("nice") else []
  env = run_env(os.environ, shared)
  log = open(os.path.join(log_dir, f"{run.name}.log"), "a")
  log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')}: {run.command()}\n")
  log.flush()
  proc = subprocess.Popen([*nice, *TRAINER, *run.argv], stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True, env=env)
  log.close()
  return proc


def execute(runs: list[Run], jobs: int, log_dir: str) -> dict[str, int]:
  """Runs the ``new`` and ``resume`` runs, ``jobs`` at a time; ``{name: exit status}``."""
  todo = [r for r in runs if r.action in ("new", "resume")]
  running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
  status: dict[str, int] = {}
  stop, forwarded = _Interrupt(), False
  old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while todo or running:
      while todo and len(running) < jobs and stop.signal is None:
        run = todo.pop(0)
        note = f" ({run.note})" if run.note else ""
        print(f"{PROG}: {run.name}: {run.action}{note}: {run.command()}", file=sys.stderr,
              flush=True)
        running[run.name] = (run, _start(run, log_dir, jobs > 1), time.time())
      if stop.signal is not None and not forwarded:
        todo.clear()
        forwarded = True
        for _, proc, _ in running.values():
          proc.send_signal(signal.SIGTERM)  # once: the run checkpoints and exits
      for name, (run, proc, t0) in list(running.items()):
        if proc.poll() is None:
          continue
        del running[name]
        status[name] = proc.returncode
        said = "finished" if proc.returncode == 0 else "stopped" if forwarded else "failed"
        if proc.returncode:
          said += f" (exit {proc.returncode}): {_last_line(os.path.join(log_dir, name + '.log'))}"
        print(f"{PROG}: {name}: {said} after {time.time() - t0:.0f} s", file=sys.stderr,
              flush=True)
      time.sleep(0.2)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  if stop.signal is not None:
    status["(interrupted)"] = 128 + stop.signal
  return status


def run_command(args) -> int:
  runs = plan_campaign(args)
  if args.dry_run:
    for run in runs:
      print(f"# {run.name}: {run.action}" + (f": {run.note}" if run.note else ""))
      if run.argv:
        print(("# " if run.action == "failed" else "") + run.command())
    return 0
  for run in runs:
    if run.action in ("done", "failed"):
      print(f"{PROG}: {run.name}: {'skipped, done' if run.action == 'done' else 'failed'}: "
            f"{run.note}", file=sys.stderr)
  log_dir = cli.prepare_out_dir(os.path.join(args.out, "logs"), flag="--out")
  status = execute(runs, args.jobs, log_dir)
  if "(interrupted)" in status:
    print(f"{PROG}: interrupted; the runs checkpointed: run the same command to continue",
          file=sys.stderr)
    return status["(interrupted)"]
  failed = [r.name for r in runs if r.action == "failed"] + [n for n, s in status.items() if s]
  done = len(runs) - len(failed)
  print(f"{PROG}: {done} of {len(runs)} runs done" + (f"; failed: {', '.join(failed)} (see "
        f"{log_dir})" if failed else ""), file=sys.stderr)
  return cli.EXIT_FAILED if failed else 0


# ----------------------------------------------------------------------- CLI
def _names(text: str) -> list[str]:
  names = [s.strip() for s in text.split(",") if s.strip()]
  if not names:
    raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
  return list(dict.fromkeys(names))


def _seeds(text: str) -> list[int]:
  return [cli.integer(s) for s in _names(text)]


def build_parser():
  p = cli.Parser(prog=PROG, description="Meta-train recipe variants at equal compute and "
                                        "compare them on held-out validation.")
  sub = p.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
  r = sub.add_parser("run", help="start or continue the runs (OUT/<variant>-s<seed>)")
  r.add_argument("--scale", choices=tuple(SCALES), default="cpu")
  r.add_argument("--variants", type=_names, default=["base"],
                 help=f"comma list of {', '.join(VARIANTS)} (or names given by --define)")
  r.add_argument("--seeds", type=_seeds, default=[0], help="comma list of seeds")
  r.add_argument("--out", default=None, help="campaign directory (default runs/ablation-SCALE)")
  r.add_argument("--budget-s", type=cli.positive_float, default=None,
                 help="wall seconds per run over all its sittings (default: the scale's)")
  r.add_argument("--jobs", type=cli.positive_int, default=1,
                 help="runs at the same time (more than one: each with XLA's CPU backend "
                      "on one thread; on a CPU host give the core count)")
  r.add_argument("--define", action="append", default=[], metavar="NAME='FLAGS'",
                 help="add or replace a variant: NAME and its lpg-meta-train flags")
  r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  q = sub.add_parser("report", help="the table and the validation curves of a campaign")
  q.add_argument("--out", required=True, help="campaign directory")
  q.add_argument("--md", default=None, help="write the markdown table here")
  q.add_argument("--png", default=None, help="write the validation curves here")
  s = sub.add_parser("rescore", help="score every run's rule again on one common validation")
  s.add_argument("--out", required=True, help="campaign directory")
  s.add_argument("--seed", type=cli.integer, default=1000,
                 help="validation keys (default 1000: none of the runs' own)")
  s.add_argument("--validate-seeds", type=cli.positive_int, default=4,
                 help="lifetimes per task and grid point (default 4)")
  s.add_argument("--which", choices=("best", "last", "both"), default="best",
                 help="rule_best.pkl, rule.pkl or both (default best)")
  s.add_argument("--md", default=None, help="write the markdown table here")
  s.add_argument("--json", default=None, help="write the scores here")
  return p


def parse(argv: list[str]):
  args = build_parser().parse_args(argv)
  if args.command in ("report", "rescore"):
    return args
  args.out = args.out or os.path.join("runs", f"ablation-{args.scale}")
  args.budget_s = args.budget_s or SCALES[args.scale].budget_s
  known = variants_with(args.define)
  unknown = [v for v in args.variants if v not in known]
  if unknown:
    raise UserError(f"--variants: unknown {', '.join(unknown)}; choose from "
                    f"{', '.join(known)} or add one with --define NAME='FLAGS'")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserError(f"--out {args.out} is a file; give a directory")
  return args


def run(argv: list[str]) -> int:
  args = parse(argv)
  if args.command == "report":
    from meta_train import ablation_report
    return ablation_report.report_command(args)
  if args.command == "rescore":
    from meta_train import ablation_rescore
    return ablation_rescore.rescore_command(args)
  return run_command(args)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.run_cli(PROG, lambda: run(argv))


if __name__ == "__main__":
  sys.exit(main())
