"""``lpg-apply``: train fresh agents on one environment with a frozen rule or a baseline.

::

  lpg-apply --rule artifact.pkl --env Breakout [--algo lpg|a2c|random|mgrl] [--steps N]
            [--seeds S] [--out DIR] [--agent tabular|mlp|conv] [--overwrite]

Writes ``DIR/summary.json``, ``DIR/curves.csv`` (step, seed, episode_return,
episodes) and ``DIR/curve.png``.  ``--env`` is a registered name
(``envs.list_envs()``, compiled end to end), ``atari/<Game>`` (ale-py, host
loop) or ``package.module:factory`` returning a ``dm_env.Environment`` with
discrete actions (host loop: much slower).  Defaults depend on the observation
kind (``DEFAULTS``).  ``--algo mgrl`` (meta-gradient RL, ``meta_test.mgrl``;
registered envs only) adds ``meta_params`` (final gamma and lambda per seed)
to the summary and ``gamma``, ``lambda`` columns to the curves.  User errors
exit with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable

import numpy as np

from meta_test import host as host_lib  # noqa: F401  (imports envs' XLA guard first)
import envs  # noqa: E402
import jax  # noqa: E402
from lpg.artifact import load_rule  # noqa: E402
from lpg.networks import AGENT_KINDS, AgentConfig, make_agent_network  # noqa: E402
from lpg.rule import make_hypers  # noqa: E402
from lpg.update import OptimizerConfig  # noqa: E402
from meta_test.baselines import A2CConfig, A2CRule, RandomRule  # noqa: E402
from meta_test.host import MissingExtraError  # noqa: E402
from meta_test.mgrl import MGRLConfig, MGRLRule, make_mgrl_train_fns  # noqa: E402
from meta_test.train import RunResult, make_train_fns, run_seeds  # noqa: E402

ALGOS = ("lpg", "a2c", "random", "mgrl")
# Compiled-run builders that differ from ``make_train_fns`` (same arguments).
TRAIN_FNS = {"mgrl": make_mgrl_train_fns}
FINAL_FRACTION = 0.1
MAX_CURVE_POINTS = 100


@dataclasses.dataclass(frozen=True)
class KindDefaults:
  """Agent and optimiser used for one observation kind.

  Attributes:
    agent: agent network kind (``lpg.networks.AGENT_KINDS``).
    hidden: MLP widths (unused by tabular agents).
    optimizer: ``sgd`` or ``adam``.
    learning_rate: inner step size.
    num_envs: ``B`` parallel environments per seed [ported: 64].
    rollout_len: ``T`` steps per update [ported: 20].
  """
  agent: str
  hidden: tuple[int, ...]
  optimizer: str
  learning_rate: float
  num_envs: int = 64
  rollout_len: int = 20


# Index (tabular): SGD lr 40 [ported: LPG tabular agents]; checked here: A2C reaches
# ~1.0 on chain/short in 100k steps and ~18 on tabular/dense in 200k (random ~ -1).
# Vector / image: MLP + Adam [ported: Adam 5e-4..1e-3 for network agents].
DEFAULTS: dict[str, KindDefaults] = {
    "index": KindDefaults("tabular", (), "sgd", 40.0),
    "vector": KindDefaults("mlp", (64, 64), "adam", 1e-3),
    "image": KindDefaults("mlp", (256, 256), "adam", 1e-3),
}
GAMMA = 0.99          # [ported: 0.99]
ALPHA_Y = 0.5         # [ported: GROOVE port]
MAX_GRAD_NORM = 0.5   # [ported]


class UsageError(ValueError):
  """A bad command line (reported as ``prog: error: ...``, exit status 2)."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, no usage block
    raise UsageError(message)


# ------------------------------------------------------------------ environments
@dataclasses.dataclass(frozen=True)
class EnvSource:
  """Where an environment comes from.

  Attributes:
    name: what the user passed to ``--env``.
    obs_spec, num_actions: static facts of one environment.
    env: the JAX-native environment (compiled path), or None.
    make_vec: ``(seed, num_envs) -> HostVecEnv`` for the host loop, or None.
  """
  name: str
  obs_spec: Any
  num_actions: int
  env: Any = None
  make_vec: Callable | None = None

  @property
  def host(self) -> bool:
    return self.env is None


def _factory_with_seed(factory: Callable, seed: int) -> Callable:
  try:
    takes_seed = "seed" in inspect.signature(factory).parameters
  except (TypeError, ValueError):
    takes_seed = False
  return (lambda: factory(seed=seed)) if takes_seed else factory


def resolve_env(name: str) -> EnvSource:
  """``--env`` value -> ``EnvSource``; ``ValueError`` / ``MissingExtraError`` if unusable."""
  if name.startswith("atari/"):
    game = name.split("/", 1)[1]
    host_lib.check_atari_available(game)
    probe = host_lib.AtariVec(game, 1)
    return EnvSource(name=name, obs_spec=probe.obs_spec, num_actions=probe.num_actions,
                     make_vec=lambda seed, n: host_lib.AtariVec(game, n, seed=seed))
  if ":" in name:
    factory = host_lib.load_factory(name)
    probe = host_lib.DmEnvVec(_factory_with_seed(factory, 0), 1, name)

    def make_vec(seed, n):
      made = iter([_factory_with_seed(factory, seed * 100_003 + i)() for i in range(n)])
      return host_lib.DmEnvVec(lambda: next(made), n, name)
    return EnvSource(name=name, obs_spec=probe.obs_spec, num_actions=probe.num_actions,
                     make_vec=make_vec)
  env = envs.make(name)
  return EnvSource(name=name, obs_spec=env.obs_spec, num_actions=env.num_actions, env=env)


# ------------------------------------------------------------------------ rules
@dataclasses.dataclass(frozen=True)
class RuleChoice:
  """The update rule of a run and where it came from."""
  algo: str
  rule: Any
  params: Any
  path: str | None = None
  checksum: str | None = None
  config: dict | None = None


def make_rule(algo: str, rule_path: str | None, loaded=None) -> RuleChoice:
  """Builds the rule for ``algo``; LPG needs ``rule_path`` (or an already ``loaded`` rule)."""
  if algo not in ALGOS:
    raise UsageError(f"--algo must be one of {', '.join(ALGOS)}, got {algo!r}")
  info = {}
  if rule_path is not None or loaded is not None:
    loaded = loaded if loaded is not None else load_rule(rule_path)
    info = dict(path=os.path.abspath(rule_path) if rule_path else None, checksum=loaded.checksum)
  if algo == "lpg":
    if loaded is None:
      raise UsageError("--algo lpg needs --rule PATH (a rule artifact .pkl)")
    return RuleChoice("lpg", loaded.rule, loaded.params,
                      config=dataclasses.asdict(loaded.config), **info)
  if algo == "a2c":
    rule = A2CRule(A2CConfig())
    return RuleChoice("a2c", rule, {}, config=dataclasses.asdict(rule.config), **info)
  if algo == "mgrl":
    rule = MGRLRule(MGRLConfig(gamma=GAMMA))
    return RuleChoice("mgrl", rule, {}, config=dataclasses.asdict(rule.config), **info)
  return RuleChoice("random", RandomRule(), {}, config={}, **info)


# --------------------------------------------------------------------- out dir
def check_out_dir(path: str, overwrite: bool) -> None:
  """Refuses an existing file, or a non-empty directory unless ``overwrite``."""
  if os.path.isfile(path) or (os.path.exists(path) and not os.path.isdir(path)):
    raise UsageError(f"--out {path} is an existing file, expected a directory")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise UsageError(f"--out {path} is not empty; pass --overwrite to replace its results")


# ------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Plan:
  """A validated run: everything decided before any training starts."""
  source: EnvSource
  rule: RuleChoice
  steps: int
  seeds: int
  out: str
  agent: AgentConfig
  optimizer: OptimizerConfig
  learning_rate: float
  num_envs: int
  rollout_len: int
  seed: int = 0

  @property
  def num_updates(self) -> int:
    return max(1, math.ceil(self.steps / (self.num_envs * self.rollout_len)))


def make_plan(env: str, algo: str, steps: int, seeds: int, out: str, rule_path: str | None = None,
              agent: str | None = None, overwrite: bool = False, loaded_rule=None,
              num_envs: int | None = None, rollout_len: int | None = None,
              learning_rate: float | None = None, seed: int = 0) -> Plan:
  """Validates every user input and returns the ``Plan`` (raises on bad input)."""
  if steps is None or int(steps) < 1:
    raise UsageError(f"--steps must be a positive integer, got {steps}")
  if seeds is None or int(seeds) < 1:
    raise UsageError(f"--seeds must be a positive integer, got {seeds}")
  for flag, v in (("--num-envs", num_envs), ("--rollout-len", rollout_len)):
    if v is not None and int(v) < 1:
      raise UsageError(f"{flag} must be a positive integer, got {v}")
  if learning_rate is not None and not learning_rate > 0:
    raise UsageError(f"--lr must be positive, got {learning_rate}")
  if agent is not None and agent not in AGENT_KINDS:
    raise UsageError(f"--agent must be one of {', '.join(AGENT_KINDS)}, got {agent!r}")
  check_out_dir(out, overwrite)
  rule = make_rule(algo, rule_path, loaded_rule)
  source = resolve_env(env)
  if rule.algo in TRAIN_FNS and source.host:
    raise UsageError(f"--algo {rule.algo} needs a registered (compiled) environment, got {env!r}")
  d = DEFAULTS[source.obs_spec.kind]
  kind = agent or d.agent
  agent_config = AgentConfig(kind=kind, hidden=d.hidden or DEFAULTS["vector"].hidden)
  # Fails early (ValueError) for e.g. a tabular agent on images.
  make_agent_network(agent_config, source.obs_spec, source.num_actions, rule.rule.head_sizes())
  # An agent kind other than the obs kind's default takes that agent's defaults.
  own = d if kind == d.agent else DEFAULTS["index" if kind == "tabular" else "vector"]
  lr = learning_rate if learning_rate is not None else own.learning_rate
  return Plan(source=source, rule=rule, steps=int(steps), seeds=int(seeds), out=out,
              agent=agent_config,
              optimizer=OptimizerConfig(name=own.optimizer, max_grad_norm=MAX_GRAD_NORM),
              learning_rate=float(lr), num_envs=int(num_envs or d.num_envs),
              rollout_len=int(rollout_len or d.rollout_len), seed=int(seed))


# ---------------------------------------------------------------------- running
def train_plan(plan: Plan, progress: bool = True) -> RunResult:
  """Trains ``plan.seeds`` agents; compiled (registered envs) or host loop."""
  hypers = make_hypers(plan.learning_rate, alpha_y=ALPHA_Y, gamma=GAMMA)
  total = plan.num_updates * (plan.seeds if plan.source.host else 1)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=f"{plan.source.name} {plan.rule.algo}", unit="upd",
               leave=False, file=sys.stderr)
  try:
    if plan.source.host:
      return host_lib.host_train(
          lambda s: plan.source.make_vec(s, plan.num_envs), plan.rule.rule, plan.rule.params,
          plan.agent, plan.optimizer, hypers, plan.num_envs, plan.rollout_len, plan.num_updates,
          seeds=[plan.seed + i for i in range(plan.seeds)],
          progress=bar.update if bar else None)
    chunk = max(1, math.ceil(plan.num_updates / 20))
    make_fns = TRAIN_FNS.get(plan.rule.algo, make_train_fns)
    fns = make_fns(plan.source.env, plan.rule.rule, plan.rule.params, plan.agent,
                   plan.optimizer, hypers, plan.num_envs, plan.rollout_len,
                   plan.num_updates, chunk=chunk)
    keys = jax.random.split(jax.random.PRNGKey(plan.seed), plan.seeds)
    return run_seeds(fns, keys, progress=bar.update if bar else None)
  finally:
    if bar is not None:
      bar.close()


def final_window(episodes: np.ndarray, fraction: float = FINAL_FRACTION) -> int:
  """Number of trailing updates averaged for the final return.

  The last ``fraction`` of updates, widened (per run, same for all seeds) until
  every seed has at least one finished episode in it, if possible.
  """
  u = episodes.shape[1]
  k = max(1, int(round(fraction * u)))
  while k < u and np.any(episodes[:, u - k:].sum(axis=1) == 0):
    k += 1
  return k


def final_returns(result: RunResult) -> tuple[np.ndarray, int]:
  """Per-seed mean return ``[S]`` of episodes finished in the final window, and its length."""
  m = result.metrics
  k = final_window(m.episodes)
  ret = m.return_sum[:, -k:].sum(1)
  cnt = m.episodes[:, -k:].sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(cnt > 0, ret / np.maximum(cnt, 1), np.nan), k


def curve_frame(result: RunResult, max_points: int = MAX_CURVE_POINTS):
  """Learning curves as a DataFrame: step, seed, episode_return, episodes.

  Updates are grouped into at most ``max_points`` bins; ``episode_return`` is
  the mean return of the episodes finished in a bin (NaN if none), ``step``
  the environment steps per seed at the bin's end.  Runs with meta-parameters
  (mgrl) add ``gamma`` and ``lambda``, their values at the bin's last update.
  """
  import pandas as pd
  m = result.metrics
  s, u = m.episodes.shape
  edges = np.unique(np.linspace(0, u, min(u, max_points) + 1).round().astype(int))
  rows = []
  for a, b in zip(edges[:-1], edges[1:]):
    cnt = m.episodes[:, a:b].sum(1)
    ret = m.return_sum[:, a:b].sum(1)
    for seed in range(s):
      rows.append((int(b) * result.steps_per_update, seed,
                   float(ret[seed] / cnt[seed]) if cnt[seed] > 0 else float("nan"),
                   int(cnt[seed])))
  df = pd.DataFrame(rows, columns=["step", "seed", "episode_return", "episodes"])
  for col, field in META_COLUMNS.items():
    if hasattr(m, field):
      df[col] = [float(getattr(m, field)[seed, b - 1]) for b in edges[1:] for seed in range(s)]
  return df


META_COLUMNS = {"gamma": "gamma", "lambda": "lambda_"}  # curves.csv column -> metrics field


def meta_params(result: RunResult) -> dict | None:
  """Final meta-parameters per seed, ``{"gamma": [S], "lambda": [S]}`` (mgrl), else None."""
  m = result.metrics
  if not all(hasattr(m, f) for f in META_COLUMNS.values()):
    return None
  return {col: [float(x) for x in getattr(m, f)[:, -1]] for col, f in META_COLUMNS.items()}


def plot_curve(df, path: str, title: str) -> None:
  """Mean over seeds and the min..max spread of ``curve_frame`` output, to a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  plot_curve_on(ax, df, label=None)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_curve_on(ax, df, label=None) -> None:
  g = df.groupby("step")["episode_return"]
  # Bins where no episode ended (long episodes, e.g. Freeway) are NaN: drop
  # them so the curve connects the bins that have data.
  mean = g.mean().dropna()
  lo, hi = g.min().reindex(mean.index), g.max().reindex(mean.index)
  line, = ax.plot(mean.index, mean.values, label=label, marker="." if len(mean) < 30 else None)
  ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2, color=line.get_color())
  ax.set_xlabel("environment steps per seed")
  ax.set_ylabel("episode return")


def normalised_score(env_name: str, value: float) -> float | None:
  """``envs.returns.normalised_score`` when that module knows the env, else None."""
  try:
    from envs import returns as env_returns
  except ImportError:
    return None
  try:
    score = env_returns.normalised_score(env_name, value)
  except (OSError, KeyError, ValueError, NotImplementedError, TypeError):
    return None  # no reference table yet, or no optimum known for this env
  return None if score is None or not np.isfinite(score) else float(score)


def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def summarise(plan: Plan, result: RunResult, wall_time_s: float) -> dict:
  """The ``summary.json`` contract."""
  per_seed, window = final_returns(result)
  learned = meta_params(result)
  extra = {} if learned is None else {"meta_params": learned}
  mean = float(np.nanmean(per_seed)) if np.any(np.isfinite(per_seed)) else float("nan")
  std = float(np.nanstd(per_seed)) if np.any(np.isfinite(per_seed)) else float("nan")
  return {
      "env": plan.source.name,
      "algo": plan.rule.algo,
      "steps": plan.steps,
      "env_steps_per_seed": plan.num_updates * plan.num_envs * plan.rollout_len,
      "seeds": plan.seeds,
      "final_return_mean": _json_float(mean),
      "final_return_std": _json_float(std),
      "final_return_per_seed": [_json_float(x) for x in per_seed],
      "final_window_updates": int(window),
      "normalised_score": normalised_score(plan.source.name, mean) if math.isfinite(mean) else None,
      "episodes": int(result.metrics.episodes.sum()),
      "rule": {"path": plan.rule.path, "checksum": plan.rule.checksum, "config": plan.rule.config},
      "wall_time_s": float(wall_time_s),
      "steps_per_s": float(result.steps_per_s),
      "compiled": not plan.source.host,
      "agent": {"kind": plan.agent.kind, "hidden": list(plan.agent.hidden)
                if plan.agent.kind != "tabular" else []},
      "hyperparameters": {
          "optimizer": plan.optimizer.name, "learning_rate": plan.learning_rate,
          "max_grad_norm": plan.optimizer.max_grad_norm, "gamma": GAMMA, "alpha_y": ALPHA_Y,
          "num_envs": plan.num_envs, "rollout_len": plan.rollout_len,
          "num_updates": plan.num_updates, "seed": plan.seed},
      "obs_kind": plan.source.obs_spec.kind,
      "versions": {"jax": jax.__version__},
      **extra,
  }


def execute(plan: Plan, progress: bool = True) -> dict:
  """Trains and writes ``summary.json``, ``curves.csv`` and ``curve.png`` into ``plan.out``."""
  t0 = time.perf_counter()
  result = train_plan(plan, progress=progress)
  wall = time.perf_counter() - t0
  summary = summarise(plan, result, wall)
  os.makedirs(plan.out, exist_ok=True)
  df = curve_frame(result)
  df.to_csv(os.path.join(plan.out, "curves.csv"), index=False)
  plot_curve(df, os.path.join(plan.out, "curve.png"),
             f"{plan.source.name}: {plan.rule.algo} ({plan.seeds} seeds)")
  tmp = os.path.join(plan.out, "summary.json.tmp")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, os.path.join(plan.out, "summary.json"))  # written last: marks completion
  return summary


# -------------------------------------------------------------------------- CLI
def env_slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="lpg-apply", description=__doc__.split("\n\n")[0])
  p.add_argument("--rule", help="rule artifact (.pkl); needed for --algo lpg")
  p.add_argument("--env", required=True,
                 help="registered name (see envs.list_envs()), atari/<Game>, or "
                      "package.module:factory returning a dm_env.Environment")
  p.add_argument("--algo", default="lpg", help="lpg (default), a2c, random or mgrl")
  p.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed (default 1e6)")
  p.add_argument("--seeds", type=int, default=3, help="independent agents (default 3)")
  p.add_argument("--out", default=None, help="output directory (default runs/<env>-<algo>)")
  p.add_argument("--agent", default=None, help="tabular, mlp or conv (default: by observation)")
  p.add_argument("--lr", type=float, default=None, help="override the default learning rate")
  p.add_argument("--num-envs", type=int, default=None, help="parallel envs per seed (64)")
  p.add_argument("--rollout-len", type=int, default=None, help="steps per update (20)")
  p.add_argument("--seed", type=int, default=0, help="base random seed")
  p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


def main(argv=None) -> int:
  """Entry point of ``lpg-apply``; returns the exit status."""
  prog = "lpg-apply"
  try:
    args = build_parser().parse_args(argv)
    out = args.out or os.path.join("runs", f"{env_slug(args.env)}-{args.algo}")
    plan = make_plan(args.env, args.algo, args.steps, args.seeds, out, rule_path=args.rule,
                     agent=args.agent, overwrite=args.overwrite, num_envs=args.num_envs,
                     rollout_len=args.rollout_len, learning_rate=args.lr, seed=args.seed)
  except (ValueError, MissingExtraError) as e:   # UsageError, ArtifactError, envs.make
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return 2
  summary = execute(plan, progress=not args.quiet)
  print(json.dumps({k: summary[k] for k in ("env", "algo", "steps", "seeds", "final_return_mean",
                                            "final_return_std", "steps_per_s")}))
  print(f"wrote {plan.out}/summary.json, curves.csv, curve.png", file=sys.stderr)
  return 0


def one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
  sys.exit(main())
