"""``lpg-meta-train``: the meta-training batch job.

    lpg-meta-train --preset smoke                       # a few minutes on 2 CPU cores
    lpg-meta-train --preset cpu --envs all --out runs/cpu
    lpg-meta-train --out runs/cpu --resume              # continue a killed run

Writes ``DIR/config.json``, ``DIR/metrics.jsonl`` (one JSON object per logging
interval), ``DIR/checkpoint.npz`` (atomic) and ``DIR/rule.pkl`` (the rule, safe
to share, exported at every checkpoint and at the end).  SIGINT/SIGTERM finish
the meta-update in flight, checkpoint and exit, so nothing is lost.  User errors
print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from envs import _xla_flags  # noqa: F401  (must precede jax)

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
PROG = "lpg-meta-train"


class UserError(Exception):
  """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
  from meta_train.config import PRESETS
  p = _Parser(prog=PROG, description="Meta-train an LPG update rule (see README).")
  p.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default smoke)")
  p.add_argument("--envs", default=None,
                 help="a suite (all, tabular, random, chain) or a comma list of env names")
  p.add_argument("--num-updates", type=int, default=None, help="meta-updates to run in total")
  p.add_argument("--agents-per-env", type=int, default=None, help="lifetimes per training env")
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--meta-lr", type=float, default=None, help="Adam step size of the rule")
  p.add_argument("--out", default=None, help="run directory (default runs/<preset>-<time>)")
  p.add_argument("--resume", action="store_true", help="continue the run in --out")
  p.add_argument("--checkpoint-every", type=int, default=None, help="meta-updates per checkpoint")
  p.add_argument("--log-every", type=int, default=None, help="meta-updates per metrics line")
  p.add_argument("--updates-per-call", type=int, default=None,
                 help="meta-updates scanned in one compiled call")
  p.add_argument("--agent-chunk", type=int, default=None,
                 help="lifetimes per sequential gradient chunk (memory ~ chunk; 0 = all)")
  p.add_argument("--time-limit", type=float, default=None,
                 help="stop cleanly (checkpoint + rule) after this many seconds; resume later")
  p.add_argument("--init-rule", default=None,
                 help="start the rule from this artifact (its config must match the preset's)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator", default=None,
                 help="HOST:PORT of process 0, to join a multi-host run (jax.distributed)")
  p.add_argument("--num-processes", type=int, default=None, help="processes in a multi-host run")
  p.add_argument("--process-id", type=int, default=None, help="this process's index (0 writes)")
  p.add_argument("--max-consecutive-skips", type=int, default=None,
                 help="stop after this many non-finite meta-updates in a row (default 10)")
  p.add_argument("--fault-injection-step", type=int, default=None, help=argparse.SUPPRESS)
  return p


def expand_envs(spec: str) -> tuple[str, ...]:
  import envs
  names: list[str] = []
  for part in [s.strip() for s in spec.split(",") if s.strip()]:
    if part in envs.SUITES:
      names.extend(envs.SUITES[part])
    else:
      envs.make(part)  # raises ValueError naming close matches
      names.append(part)
  if not names:
    raise UserError("--envs is empty; give a suite (all, tabular, random, chain) or env names")
  return tuple(dict.fromkeys(names))


def make_config(args):
  from meta_train.config import PRESETS
  if args.preset not in PRESETS:
    raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
  config = PRESETS[args.preset]
  overrides = {}
  env_spec = args.envs if args.envs is not None else ",".join(config.envs)
  overrides["envs"] = expand_envs(env_spec)
  for flag, field in (("num_updates", "num_updates"), ("agents_per_env", "agents_per_env"),
                      ("seed", "seed"), ("checkpoint_every", "checkpoint_every"),
                      ("log_every", "log_every"), ("updates_per_call", "updates_per_call"),
                      ("fault_injection_step", "fault_injection_step"),
                      ("max_consecutive_skips", "max_consecutive_skips"),
                      ("agent_chunk", "agent_chunk"), ("meta_lr", "meta_lr")):
    value = getattr(args, flag)
    if value is not None:
      overrides[field] = value
  return dataclasses.replace(config, **overrides)


def git_commit() -> str | None:
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=5)
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None
  except (OSError, subprocess.SubprocessError):
    return None


def check_out_dir(out: str, resume: bool, main_process: bool = True) -> None:
  from meta_train import checkpoint
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; give a directory path")
  if resume:
    if not checkpoint.exists(out) or not os.path.isfile(os.path.join(out, "config.json")):
      raise UserError(f"--resume: no checkpoint in {out}; start a new run without --resume")
  elif main_process and os.path.isdir(out) and os.listdir(out):
    raise UserError(f"--out {out} is not empty; pass --resume to continue it or choose a new "
                    "directory")


def _scalar(x) -> int:
  """A replicated scalar as an int (works for multi-host arrays too)."""
  return int(x.addressable_data(0)) if hasattr(x, "addressable_data") else int(x)


class _Stop:
  """Records SIGINT/SIGTERM so the loop can checkpoint before exiting."""

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    if self.signal is not None:  # second signal: give up at once
      raise KeyboardInterrupt
    self.signal = signum


def run(argv: list[str]) -> int:
  args = build_parser().parse_args(argv)
  out = args.out or os.path.join(
      "runs", f"{args.preset}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  multi = any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
  if multi and (args.coordinator is None or args.num_processes is None or args.process_id is None):
    raise UserError("a multi-host run needs all of --coordinator, --num-processes and --process-id")
  if multi and args.out is None:
    raise UserError("a multi-host run needs an explicit --out on a filesystem all hosts share")
  if multi:  # before anything touches a JAX backend (env construction does)
    from meta_train import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  check_out_dir(out, args.resume, main_process=not multi or args.process_id == 0)
  try:
    config = _resolve_config(args, out)
  except ValueError as e:  # invalid config values, unknown env names
    raise UserError(str(e)) from None
  return _train(args, argv, out, config)


def _resolve_config(args, out):
  from meta_train.config import TrainConfig
  if args.resume:
    with open(os.path.join(out, "config.json")) as f:
      saved = json.load(f)
    config = TrainConfig.from_dict(saved["config"])
    changes = {}
    if args.num_updates is not None:
      changes["num_updates"] = args.num_updates
    if args.checkpoint_every is not None:
      changes["checkpoint_every"] = args.checkpoint_every
    for field in ("fault_injection_step", "max_consecutive_skips"):
      if getattr(args, field) is not None:
        changes[field] = getattr(args, field)
    return dataclasses.replace(config, **changes)
  return make_config(args)


def _train(args, argv, out, config) -> int:

  import jax
  import numpy as np
  from meta_train import checkpoint, distributed
  main_process = distributed.is_main_process()
  from meta_train.logging_utils import MetricsLogger
  from meta_train.trainer import make_meta_train
  from lpg.artifact import save_rule

  devices = jax.devices()
  device_desc = (f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
                 f"{jax.process_count()} process(es)")
  mesh = distributed.make_mesh(devices) if len(devices) > 1 else None
  try:
    distributed.check_population(config.agents_per_env, config.agent_chunk, len(devices))
  except ValueError as e:
    raise UserError(str(e)) from None
  command = " ".join([PROG] + [shlex.quote(a) for a in argv])
  if main_process:
    os.makedirs(out, exist_ok=True)
  print(f"{PROG}: {len(config.envs)} envs x {config.agents_per_env} lifetimes = "
        f"{config.population} agents; rule LSTM {config.rule.hidden}; K={config.meta.num_inner}; "
        f"devices: {device_desc}; out: {out}", file=sys.stderr)
  if not args.resume and main_process:
    with open(os.path.join(out, "config.json"), "w") as f:
      json.dump({"config": config.to_dict(), "command": command, "preset": args.preset,
                 "devices": {"count": len(devices), "kind": devices[0].device_kind,
                             "platform": devices[0].platform,
                             "processes": jax.process_count()},
                 "jax": jax.__version__, "git_commit": git_commit(),
                 "started": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=2)

  mt = make_meta_train(config, mesh=mesh)
  ckpt_path = os.path.join(out, checkpoint.FILENAME)
  if args.resume:
    template = jax.eval_shape(mt.init, config.seed)
    state, header = checkpoint.restore(ckpt_path, template)
    state = (distributed.from_host(state, mt.shardings) if mt.shardings is not None
             else jax.tree_util.tree_map(jax.numpy.asarray, state))
    wall_offset = float(header.get("wall_time_s", 0.0))
  else:
    state = mt.init(config.seed)
    wall_offset = 0.0
    if args.init_rule:
      from lpg.artifact import load_rule
      loaded = load_rule(args.init_rule)
      if loaded.config != config.rule:
        raise UserError(f"--init-rule {args.init_rule} has rule config {loaded.config}, this run "
                        f"needs {config.rule}; choose a matching preset")
      params = jax.tree_util.tree_map(jax.numpy.asarray, loaded.params)
      if mt.shardings is not None:
        params = distributed.from_host(loaded.params, mt.shardings.rule_params)
      state = state._replace(rule_params=params)
  step = _scalar(state.step)
  start_step = step
  logger = MetricsLogger(os.path.join(out, "metrics.jsonl"), config, mt, resume=args.resume,
                         start_step=step, write=main_process)

  def export(state, wall):
    meta = {"command": command, "envs": list(config.envs), "meta_updates": _scalar(state.step),
            "agent_steps": _scalar(state.step) * config.agent_steps_per_update,
            "seed": config.seed, "git_commit": git_commit(), "jax": jax.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "hardware": device_desc, "wall_time_s": round(wall, 1),
            "train_config": config.to_dict()}
    host_state = distributed.to_host(state)  # every process takes part in the gather
    if main_process:
      checkpoint.save(ckpt_path, host_state, {"step": int(host_state.step), "wall_time_s": wall})
      save_rule(os.path.join(out, "rule.pkl"), host_state.rule_params, config.rule, meta)

  stopper = _Stop()
  old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
  from tqdm import tqdm
  bar = tqdm(total=config.num_updates, initial=step, desc="meta-train", unit="upd",
             disable=args.no_progress or not main_process or None, dynamic_ncols=True, file=sys.stderr)
  t0 = time.time()
  consecutive_skips = 0
  first_call = (0, 0.0)
  timed_out = False
  last_ckpt = step
  try:
    while step < config.num_updates:
      n = min(config.updates_per_call, config.num_updates - step)
      tic = time.time()
      new_state, metrics = mt.run(state, n)
      metrics = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), metrics)
      state = new_state
      step = _scalar(state.step)
      dt = time.time() - tic
      if step - n == start_step:
        first_call = (n, dt)
        print(f"{PROG}: first call (compile + {n} meta-update(s)) took {dt:.1f} s", file=sys.stderr)
      skipped = np.asarray(metrics.skipped, bool)
      for s in skipped:
        consecutive_skips = consecutive_skips + 1 if s else 0
      postfix = logger.add(metrics, seconds=dt, step=step, wall=wall_offset + time.time() - t0)
      bar.update(n)
      if postfix:
        bar.set_postfix(postfix, refresh=False)
      if consecutive_skips >= config.max_consecutive_skips:
        bar.close()
        logger.flush(step, wall_offset + time.time() - t0)
        print(f"{PROG}: stopped: {consecutive_skips} meta-updates in a row had a non-finite "
              f"meta-gradient or rule; the last good checkpoint in {out} is kept (try a lower "
              "meta learning rate)", file=sys.stderr)
        return EXIT_FAILED
      if config.checkpoint_every and step - last_ckpt >= config.checkpoint_every:
        export(state, wall_offset + time.time() - t0)
        last_ckpt = step
      if stopper.signal is not None:
        break
      if args.time_limit is not None and time.time() - t0 >= args.time_limit:
        timed_out = True
        break
    logger.flush(step, wall_offset + time.time() - t0)
    export(state, wall_offset + time.time() - t0)
  finally:
    bar.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  wall = time.time() - t0
  done = step - start_step
  if stopper.signal is not None and step < config.num_updates:
    print(f"{PROG}: interrupted at meta-update {step}/{config.num_updates}; checkpoint saved, "
          f"continue with: {PROG} --out {shlex.quote(out)} --resume", file=sys.stderr)
    return 128 + stopper.signal
  if timed_out and step < config.num_updates:
    print(f"{PROG}: time limit reached at meta-update {step}/{config.num_updates}; checkpoint "
          f"saved, continue with: {PROG} --out {shlex.quote(out)} --resume", file=sys.stderr)
  # Steady-state rate: the first call includes compilation.
  steady = done - first_call[0]
  rate = (steady * config.agent_steps_per_update / max(wall - first_call[1], 1e-9) if steady > 0
          else done * config.agent_steps_per_update / max(wall, 1e-9))
  print(f"{PROG}: {step} meta-updates ({done} this session, {wall:.0f} s, "
        f"{rate:,.0f} agent-steps/s, {_scalar(state.skipped)} skipped); rule: "
        f"{os.path.join(out, 'rule.pkl')}", file=sys.stderr)
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  from lpg.artifact import ArtifactError
  from meta_train.checkpoint import CheckpointError
  try:
    return run(argv)
  except (UserError, CheckpointError, ArtifactError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
  sys.exit(main())
