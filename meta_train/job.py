"""The meta-training job's host loop: start (or restore), run compiled calls, log, checkpoint.

``run_job(plan)`` takes a validated ``cli.Plan``.  Before writing anything it
builds the compiled functions and restores the checkpoint or initialises the
state (loading ``--init-rule``), so a damaged checkpoint or a mismatched rule is
refused with nothing changed.  Between compiled calls (``MetaTrain.run``) the
host only logs, validates (``meta_train.validation``: every ``validate_every``
meta-updates and at the end), checkpoints and checks the stop conditions.  A
validating run checkpoints ``JobState(train, best)`` so a resume keeps the best
rule and its score.
"""
from __future__ import annotations

import datetime
import os
import shlex
import signal
import sys
import time

import jax
import numpy as np

from lpg.cli import EXIT_FAILED, UserError
from meta_train import checkpoint, distributed, run_dir, validation
from meta_train.cli import PROG, git_commit
from meta_train.logging_utils import MetricsLogger
from meta_train.trainer import make_meta_train


def scalar(x) -> int:
  """A replicated scalar as an int (works for multi-host arrays too)."""
  return int(x.addressable_data(0)) if hasattr(x, "addressable_data") else int(x)


def device_record() -> dict:
  devices = jax.devices()
  return {"count": len(devices), "kind": devices[0].device_kind,
          "platform": devices[0].platform, "processes": jax.process_count()}


def load_init_rule(path: str, config, shardings):
  """Rule parameters from the artifact at ``path``; its rule config must equal ``config.rule``."""
  from lpg.artifact import load_rule
  loaded = load_rule(path, families=(config.family,))
  if loaded.config != config.rule:
    raise UserError(f"--init-rule {path} has rule config {loaded.config}, this run needs "
                    f"{config.rule}; choose a matching preset")
  if shardings is not None:
    return distributed.from_host(loaded.params, shardings.rule_params)
  return jax.tree_util.tree_map(jax.numpy.asarray, loaded.params)


def start_state(plan, mt):
  """``(state, best, wall_offset)``: restored from the newest checkpoint, or a fresh start.

  ``best`` (``validation.Best``) is None when the run does not validate.
  """
  validating = plan.config.validating
  if plan.restore:
    template = jax.eval_shape(mt.init, plan.config.seed)
    if validating:
      template = validation.JobState(template, validation.Best(
          jax.ShapeDtypeStruct((), np.float32), jax.ShapeDtypeStruct((), np.int32),
          template.rule_params))
    saved, header, _ = checkpoint.restore_latest(plan.out, template)
    state, best = (saved.train, saved.best) if validating else (saved, None)
    state = (distributed.from_host(state, mt.shardings) if mt.shardings is not None
             else jax.tree_util.tree_map(jax.numpy.asarray, state))
    return state, best, float(header.get("wall_time_s", 0.0))
  rule_params = (load_init_rule(plan.init_rule, plan.config, mt.shardings)
                 if plan.init_rule else None)
  state = mt.init(plan.config.seed)
  if rule_params is not None:
    with_rule = getattr(mt, "with_rule", None)  # ES: the rule is its mean
    state = (with_rule(state, rule_params) if with_rule is not None
             else state._replace(rule_params=rule_params))
  best = validation.initial_best(state.rule_params) if validating else None
  return state, best, 0.0


def write_start(plan) -> None:
  """The first writes of the job: the directory, stale temp files removed, config.json."""
  from lpg.cli import prepare_out_dir
  if not plan.main_process:
    return
  prepare_out_dir(plan.out)
  for path in checkpoint.remove_stale(plan.out):
    print(f"{PROG}: removed {path}, left by a checkpoint write that was interrupted",
          file=sys.stderr)
  record = dict(plan.record, jax=jax.__version__, devices=device_record())
  record["history"][-1]["devices"] = record["devices"]
  run_dir.write_record(plan.out, record)


class Exporter:
  """Writes the checkpoint, ``rule.pkl`` and ``rule_best.pkl`` (process 0; all join the gather)."""

  def __init__(self, plan, device_desc: str, setup):
    self.plan, self.device_desc, self.setup = plan, device_desc, setup
    self.commands = [h.get("command") for h in run_dir.history(plan.record)]

  def __call__(self, state, wall: float, best=None, best_settings: dict | None = None) -> None:
    """``best_settings``: the validation's ``chosen_settings`` for ``rule_best.pkl``."""
    from lpg.artifact import save_rule
    config, step = self.plan.config, scalar(state.step)
    meta = {"command": self.commands[0], "commands": self.commands, "envs": list(config.envs),
            "meta_updates": step, "agent_steps": step * config.agent_steps_per_update,
            "seed": config.seed, "git_commit": git_commit(), "jax": jax.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "hardware": self.device_desc, "wall_time_s": round(wall, 1),
            "train_config": config.to_dict()}
    host_state = distributed.to_host(state)
    if not self.plan.main_process:
      return
    saved = host_state if best is None else validation.JobState(host_state, best)
    checkpoint.save(self.plan.out, saved, step, {"wall_time_s": wall},
                    keep=config.keep_checkpoints)
    extras = {"meta_test": validation.settled(self.setup, host_state.bandit)}
    save_rule(os.path.join(self.plan.out, run_dir.RULE), host_state.rule_params, config.rule,
              meta, extras=extras)
    if best is not None and int(best.step) >= 0:
      chosen = validation.with_chosen(extras["meta_test"], best_settings, int(best.step))
      save_rule(os.path.join(self.plan.out, validation.RULE_BEST), best.rule_params, config.rule,
                dict(meta, validation_score=float(best.score), validated_at=int(best.step),
                     validate_envs=list(config.validate_envs)),
                extras={"meta_test": chosen})


class _Stop:
  """Records SIGINT/SIGTERM so the loop can checkpoint before exiting."""

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    if self.signal is not None:  # second signal: give up at once
      raise KeyboardInterrupt
    self.signal = signum


def build(config, devices):
  """``(trainer, MetricsLogger class, description)`` of the configured meta-optimizer."""
  if config.family == "metagenrl":
    from meta_train import metagenrl_job
    return metagenrl_job.build(config, devices)
  mesh = distributed.make_mesh(devices) if len(devices) > 1 else None
  try:
    if config.meta_optimizer == "es":
      from meta_train import es_train
      mt = es_train.make_es_train(config, mesh=mesh)
      return mt, es_train.ESMetricsLogger, (
          f"ES: {config.es_population} members x {len(config.envs)} envs x {config.es_seeds} "
          f"lifetime(s) of {config.lifetime_updates} updates")
    distributed.check_population(config.agents_per_env, config.agent_chunk, len(devices))
  except ValueError as e:
    raise UserError(str(e)) from None
  return make_meta_train(config, mesh=mesh), MetricsLogger, (
      f"{len(config.envs)} envs x {config.agents_per_env} lifetimes = {config.population} "
      f"agents; K={config.meta.num_inner}")


def run_job(plan, time_limit: float | None = None, progress: bool = True) -> int:
  config = plan.config
  devices = jax.devices()
  mt, logger_class, what = build(config, devices)
  state, best, wall_offset = start_state(plan, mt)
  write_start(plan)
  validator = validation.make_validator(mt.setup, plan.out) if best is not None else None
  device_desc = (f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
                 f"{jax.process_count()} process(es)")
  for note in plan.notes:
    print(f"{PROG}: {note}", file=sys.stderr)
  print(f"{PROG}: {what}; rule LSTM {config.rule.hidden}; devices: {device_desc}; "
        f"out: {plan.out}", file=sys.stderr)
  logger = logger_class(os.path.join(plan.out, run_dir.METRICS), config, mt,
                         resume=plan.restore or os.path.exists(os.path.join(plan.out, run_dir.METRICS)),
                         start_step=scalar(state.step), write=plan.main_process)
  check = Checker(plan, mt, validator, logger, best)
  return _loop(plan, mt, state, logger, Exporter(plan, device_desc, mt.setup), wall_offset,
               time_limit, progress, check)


class Checker:
  """Runs held-out validation between compiled calls and keeps the best rule (or does nothing)."""

  def __init__(self, plan, mt, validator, logger, best):
    self.plan, self.mt, self.validator, self.logger, self.best = plan, mt, validator, logger, best
    self.seconds, self.postfix = 0.0, {}
    self.last = int(best.step) if best is not None else -1  # last validated meta-update
    # The best rule's meta-test settings; a resumed job reads them back from the metrics.
    self.best_settings = None if validator is None else validation.settings_at(
        os.path.join(plan.out, run_dir.METRICS), self.last, plan.config, validator.references)

  def due(self, step: int, final: bool) -> bool:
    """At the first step of each new multiple of ``validate_every``, and at the end."""
    every = self.plan.config.validate_every
    if self.validator is None or self.last == step:
      return False
    return final or step // every > max(self.last, 0) // every

  def __call__(self, state, step: int, wall: float, final: bool = False) -> None:
    if not self.due(step, final):
      return
    tic = time.time()
    result = validation.validate(self.validator, self.plan.config, state.rule_params)
    score = result["validation_score"]
    self.best = validation.improved(self.best, score if score is not None else np.nan, step,
                                    state.rule_params)
    if int(self.best.step) == step:
      self.best_settings = result.get("settings")
    dt = time.time() - tic
    self.seconds += dt
    self.last = step
    self.logger.write_line(dict(
        meta_update=step, agent_steps=step * self.plan.config.agent_steps_per_update,
        wall_time_s=round(wall + dt, 2), **result, validation_best=float(self.best.score),
        validation_best_at=int(self.best.step), validation_seconds=round(dt, 2)))
    self.postfix = {"val": "nan" if score is None else f"{score:.2f}",
                    "best": f"{float(self.best.score):.2f}"}


def _loop(plan, mt, state, logger, export, wall_offset, time_limit, progress, check) -> int:
  """Runs compiled calls until done, stopped, timed out or failing; prints the summary."""
  from tqdm import tqdm
  config, out = plan.config, plan.out
  step = start_step = scalar(state.step)
  stopper = _Stop()
  old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
  bar = tqdm(total=config.num_updates, initial=step, desc="meta-train", unit="upd",
             disable=not progress or not plan.main_process or None, dynamic_ncols=True,
             file=sys.stderr)
  t0, skips, first_call, last_ckpt, timed_out = time.time(), 0, (0, 0.0), step, False
  wall = lambda: wall_offset + time.time() - t0
  try:
    while step < config.num_updates:
      n = min(config.updates_per_call, config.num_updates - step)
      tic = time.time()
      state, metrics = mt.run(state, n)
      metrics = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), metrics)
      step, dt = scalar(state.step), time.time() - tic
      if step - n == start_step:
        first_call = (n, dt)
        print(f"{PROG}: first call (compile + {n} meta-update(s)) took {dt:.1f} s", file=sys.stderr)
      for s in np.asarray(metrics.skipped, bool):
        skips = skips + 1 if s else 0
      postfix = logger.add(metrics, seconds=dt, step=step, wall=wall())
      bar.update(n)
      check(state, step, wall())
      if postfix or check.postfix:
        bar.set_postfix({**(postfix or {}), **check.postfix}, refresh=False)
      if skips >= config.max_consecutive_skips:
        bar.close()
        logger.flush(step, wall())
        print(f"{PROG}: stopped: {skips} meta-updates in a row had a non-finite meta-gradient "
              f"or rule; the last good checkpoint in {out} is kept (try a lower meta learning "
              "rate)", file=sys.stderr)
        return EXIT_FAILED
      if config.checkpoint_every and step - last_ckpt >= config.checkpoint_every:
        export(state, wall(), check.best, check.best_settings)
        last_ckpt = step
      timed_out = time_limit is not None and time.time() - t0 >= time_limit
      if stopper.signal is not None or timed_out:
        break
    logger.flush(step, wall())
    # A run that used its time budget is validated where it stops (an ablation's last point).
    check(state, step, wall(), final=step >= config.num_updates or timed_out)
    export(state, wall(), check.best, check.best_settings)
  finally:
    bar.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  return _summary(plan, state, stopper, timed_out, start_step, time.time() - t0, first_call,
                  check)


def _summary(plan, state, stopper, timed_out, start_step, wall, first_call, check) -> int:
  config, step = plan.config, scalar(state.step)
  resume = f"continue with: {PROG} --out {shlex.quote(plan.out)} --resume"
  if stopper.signal is not None and step < config.num_updates:
    print(f"{PROG}: interrupted at meta-update {step}/{config.num_updates}; checkpoint saved, "
          f"{resume}", file=sys.stderr)
    return 128 + stopper.signal
  if timed_out and step < config.num_updates:
    print(f"{PROG}: time limit reached at meta-update {step}/{config.num_updates}; checkpoint "
          f"saved, {resume}", file=sys.stderr)
  done = step - start_step
  steady = done - first_call[0]  # the first call includes compilation
  rate = (steady * config.agent_steps_per_update / max(wall - first_call[1], 1e-9) if steady > 0
          else done * config.agent_steps_per_update / max(wall, 1e-9))
  print(f"{PROG}: {step} meta-updates ({done} this session, {wall:.0f} s, {rate:,.0f} "
        f"agent-steps/s, {scalar(state.skipped)} skipped); rule: "
        f"{os.path.join(plan.out, run_dir.RULE)}", file=sys.stderr)
  if check.validator is not None:
    print(f"{PROG}: validation took {check.seconds:.1f} s ({100 * check.seconds / max(wall, 1e-9):.1f}"
          f"% of this session's wall time); best validation score {float(check.best.score):.3f} at "
          f"meta-update {int(check.best.step)}: {os.path.join(plan.out, validation.RULE_BEST)}",
          file=sys.stderr)
  return 0
