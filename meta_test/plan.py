"""Planning a meta-test run: environment resolution, defaults and validation.

``make_plan(...)`` turns what a user asked for (``lpg-apply`` flags, or one run of
``lpg-report``) into a ``RunPlan``: everything is decided, and every bad input refused with a
``lpg.cli.UserError``, before any training starts.  Defaults depend on the observation kind
(``DEFAULTS``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
from typing import Any, Callable

import envs
from lpg.cli import UserError, one_line
from lpg.networks import AGENT_KINDS, AgentConfig, make_agent_network
from lpg.rule import EntropyBonus
from lpg.update import OptimizerConfig
from meta_test import host as host_lib
from meta_test.algos import ALGOS, Choice, make_choice
from meta_test.train import RunConfig


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


def _factory_source(name: str) -> EnvSource:
  factory = host_lib.load_factory(name)
  probe = host_lib.DmEnvVec(_factory_with_seed(factory, 0), 1, name)

  def make_vec(seed, n):
    made = iter([host_lib.call_factory(_factory_with_seed(factory, seed * 100_003 + i), name)
                 for i in range(n)])
    return host_lib.DmEnvVec(lambda: next(made), n, name)
  return EnvSource(name=name, obs_spec=probe.obs_spec, num_actions=probe.num_actions,
                   make_vec=make_vec)


def resolve_env(name: str) -> EnvSource:
  """``--env`` value -> ``EnvSource``: a registered name, ``atari/<Game>`` or
  ``package.module:factory``; ``UserError`` / ``MissingExtraError`` if unusable."""
  if name.startswith("atari/"):
    game = name.split("/", 1)[1]
    host_lib.check_atari_available(game)
    probe = host_lib.AtariVec(game, 1)
    return EnvSource(name=name, obs_spec=probe.obs_spec, num_actions=probe.num_actions,
                     make_vec=lambda seed, n: host_lib.AtariVec(game, n, seed=seed))
  if ":" in name:
    return _factory_source(name)
  try:
    env = envs.make(name)
  except ValueError as e:     # unknown name: the message suggests close matches
    raise UserError(one_line(e)) from None
  return EnvSource(name=name, obs_spec=env.obs_spec, num_actions=env.num_actions, env=env)


def env_slug(name: str) -> str:
  """A file-name-safe form of an ``--env`` value."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class RunPlan:
  """A validated run: everything decided before any training starts.

  Attributes:
    source: the environment.
    choice: the algorithm (``meta_test.algos``).
    steps: environment steps per seed asked for (rounded up to whole updates).
    seeds: independent agents.
    out: output directory.
    run: agent, optimiser, hyperparameters and batch shape (``RunConfig``).
    seed: base random seed.
    hyper_sources: where the learning rate and alpha_y came from (``"artifact"``, ``"flag"``
      or ``"default"``; ``"<source> x <scale>"`` under ``--tune lr_scale``), written to
      ``summary.json``.
  """
  source: EnvSource
  choice: Choice
  steps: int
  seeds: int
  out: str
  run: RunConfig
  seed: int = 0
  hyper_sources: dict | None = None

  @property
  def num_updates(self) -> int:
    return int(self.run.num_updates)

  def settings(self) -> dict:
    """Everything that determines the run's results (JSON-able): a resumed report reuses
    a finished run only when these match."""
    needs_rule = ALGOS[self.choice.algo].needs_rule
    return {"env": self.source.name, "algo": self.choice.algo, "steps": self.steps,
            "seeds": self.seeds, "agent": agent_dict(self.run.agent),
            "hyperparameters": hyperparameters(self), "algo_settings": self.choice.settings_dict(),
            "rule_checksum": self.choice.checksum if needs_rule else None}

  def settings_key(self) -> str:
    """A checksum of ``settings()``."""
    text = json.dumps(self.settings(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def agent_dict(agent: AgentConfig) -> dict:
  d = {"kind": agent.kind, "hidden": list(agent.hidden) if agent.kind != "tabular" else []}
  return d | ({"separate_value": True} if agent.separate_value else {})


def hyperparameters(plan: RunPlan) -> dict:
  r = plan.run
  return {"optimizer": r.optimizer.name, "learning_rate": r.learning_rate,
          "max_grad_norm": r.optimizer.max_grad_norm, "gamma": r.gamma, "alpha_y": r.alpha_y,
          "num_envs": r.num_envs, "rollout_len": r.rollout_len, "num_updates": r.num_updates,
          "seed": plan.seed} | ({"anneal_lr": True} if r.anneal_lr else {}) | (
              {"entropy_bonus": plan.choice.rule.coef}
              if isinstance(plan.choice.rule, EntropyBonus) else {})


def _positive(flag: str, value, allow_none: bool = False, whole: bool = True) -> None:
  if value is None and allow_none:
    return
  ok = value is not None and math.isfinite(float(value)) and float(value) > 0
  if not ok or (whole and float(value) != int(value)):
    kind = "positive whole number" if whole else "positive finite number"
    raise UserError(f"{flag} must be a {kind}, got {value}")


def artifact_hypers(loaded_rule, agent_kind: str, learning_rate: float | None,
                    default_lr: float, num_updates: int | None = None) -> dict:
  """The inner learning rate and alpha_y of an LPG run, and where each came from.

  An artifact written by ``lpg-meta-train`` carries ``extras["meta_test"]`` with,
  per agent kind (``tabular``; ``network`` for MLP/conv agents), the learning rate
  and alpha_y its validation chose; those are the defaults, a ``--lr`` flag
  overrides, and an artifact without them (or another algorithm) keeps the
  built-in defaults.  An artifact shipped with ``lpg-ship --meta-test-lifetimes`` also
  carries ``by_lifetime``, settings chosen by validation on lifetimes of several lengths;
  a run of ``num_updates`` updates then takes the entry of the nearest length
  (``for_lifetime``; source ``"artifact (N-update lifetimes)"``).  Returns
  ``{"learning_rate", "alpha_y", "sources": {name: "artifact..." | "flag" | "default"},
  "artifact": the stored entry (the lifetime's, if one applies) or None}``.
  """
  extras = getattr(loaded_rule, "extras", None) or {}
  stored = (extras.get("meta_test") or {}).get("tabular" if agent_kind == "tabular"
                                                else "network")
  stored = stored if isinstance(stored, dict) else None
  src = "artifact"
  matched = (for_lifetime(stored.get("by_lifetime"), num_updates)
             if stored and num_updates else None)
  if matched is not None:
    stored, src = matched, f"artifact ({matched['updates']}-update lifetimes)"
  lr, lr_src = ((float(learning_rate), "flag") if learning_rate is not None else
                (float(stored["learning_rate"]), src) if stored and "learning_rate" in stored
                else (float(default_lr), "default"))
  ay, ay_src = ((float(stored["alpha_y"]), src) if stored and "alpha_y" in stored
                else (ALPHA_Y, "default"))
  return {"learning_rate": lr, "alpha_y": ay, "artifact": stored,
          "sources": {"learning_rate": lr_src, "alpha_y": ay_src}}


def for_lifetime(entries, num_updates: int) -> dict | None:
  """The ``by_lifetime`` entry (``meta_train.validation.lifetime_settings``) whose lifetime
  is nearest ``num_updates`` on a log scale (the shorter on a tie), or None if none fits."""
  ok = [e for e in entries if isinstance(e, dict) and isinstance(e.get("updates"), int)
        and e["updates"] > 0 and "learning_rate" in e] if isinstance(entries, list) else []
  if not ok or num_updates <= 0:
    return None
  return min(ok, key=lambda e: (abs(math.log(e["updates"] / num_updates)), e["updates"]))


def agent_widths(obs_kind: str, hidden: tuple[int, ...] | None) -> tuple[tuple[int, ...], str]:
  """The MLP widths of a run and where they came from (``"flag"`` or ``"default"``).

  ``--hidden`` wins; otherwise the observation kind's default (``DEFAULTS``), the same for
  every algorithm, so that a rule and the baselines train the same torso.  A rule's
  artifact records the widths it was meta-trained and validated with
  (``extras["meta_test"]["network"]["hidden"]``, see ``rule_widths``); they are not the
  default because widths do not transfer one way: measured on CartPole (200k steps,
  3 seeds), lpg_toy15 (meta-trained with 64-unit agents) reaches 88 +- 8 with ``--hidden 64``
  and 116 +- 28 with the default 64,64, while a MetaGenRL objective did the opposite.
  """
  if hidden:
    return tuple(int(h) for h in hidden), "flag"
  return DEFAULTS[obs_kind].hidden or DEFAULTS["vector"].hidden, "default"


def rule_widths(loaded_rule) -> list[int] | None:
  """The MLP widths a rule's artifact says it was meta-trained with, or None."""
  extras = getattr(loaded_rule, "extras", None) or {}
  stored = (extras.get("meta_test") or {}).get("network")
  widths = stored.get("hidden") if isinstance(stored, dict) else None
  ok = isinstance(widths, list) and widths and all(isinstance(w, int) and w > 0 for w in widths)
  return list(widths) if ok else None


def make_plan(env: str, algo: str, steps: int, seeds: int, out: str, rule_path: str | None = None,
              agent: str | None = None, loaded_rule=None, num_envs: int | None = None,
              rollout_len: int | None = None, learning_rate: float | None = None,
              seed: int = 0, overrides: dict | None = None,
              hidden: tuple[int, ...] | None = None, entropy_bonus: float = 0.0) -> RunPlan:
  """Validates every input and returns the ``RunPlan``; ``UserError`` (or the artifact's and
  host's own one-line errors) on bad input.  Writes nothing; ``out`` is not checked here.

  ``overrides`` (``lpg-report --tune``): ``lr``, ``lr_scale``, ``num_envs``, ``rollout_len``
  or a field of the algorithm's settings (e.g. A2C's ``entropy_coef``) -> value; they win over
  flags.  ``lr_scale`` multiplies the step size the run would otherwise use (flag, artifact or
  the kind's default), so one grid tunes a suite that mixes tabular SGD and network Adam agents.
  ``hidden`` (``--hidden``): MLP widths; without it see ``agent_widths``.
  ``entropy_bonus`` (``--entropy-bonus``, tunable as ``entropy_bonus``): a learned rule's
  agents also ascend this x their policy entropy (``lpg.rule.EntropyBonus``).
  """
  overrides = dict(overrides or {})
  learning_rate = overrides.pop("lr", learning_rate)
  lr_scale = overrides.pop("lr_scale", 1.0)
  num_envs = overrides.pop("num_envs", num_envs)
  rollout_len = overrides.pop("rollout_len", rollout_len)
  entropy_bonus = float(overrides.pop("entropy_bonus", entropy_bonus))
  _positive("--steps", steps)
  _positive("--seeds", seeds)
  _positive("--num-envs", num_envs, allow_none=True)
  _positive("--rollout-len", rollout_len, allow_none=True)
  _positive("--lr", learning_rate, allow_none=True, whole=False)
  _positive("--tune lr_scale", lr_scale, whole=False)
  if agent is not None and agent not in AGENT_KINDS:
    raise UserError(f"--agent must be one of {', '.join(AGENT_KINDS)}, got {agent!r}")
  if algo not in ALGOS:
    make_choice(algo)          # the unknown-name error, before any loading
  if loaded_rule is None and rule_path is not None:
    from lpg.artifact import BUILDERS, load_rule
    loaded_rule = load_rule(rule_path, families=tuple(BUILDERS))
  choice = make_choice(algo, loaded_rule, rule_path)
  if entropy_bonus:
    if not (math.isfinite(entropy_bonus) and entropy_bonus > 0):
      raise UserError(f"--entropy-bonus must be a finite number >= 0, got {entropy_bonus}")
    if not ALGOS[algo].needs_rule:
      raise UserError(f"--entropy-bonus is for learned rules (--algo lpg); {algo} has its own "
                      "settings (A2C and PPO: entropy_coef)")
    choice = dataclasses.replace(choice, rule=EntropyBonus(choice.rule, entropy_bonus))
  source = resolve_env(env)
  if source.host and not ALGOS[algo].host:
    raise UserError(f"--algo {algo} needs a registered (compiled) environment, got {env!r}")
  d = DEFAULTS[source.obs_spec.kind]
  kind = agent or d.agent
  settings = with_overrides(algo_settings(algo, choice,
                                          "index" if kind == "tabular" else source.obs_spec.kind),
                            overrides, algo)
  widths, widths_src = agent_widths(source.obs_spec.kind, hidden)
  agent_config = AgentConfig(kind=kind, hidden=widths,
                             separate_value=bool(getattr(settings, "separate_value", False)))
  try:     # fails early for e.g. a tabular agent on images
    make_agent_network(agent_config, source.obs_spec, source.num_actions,
                       choice.rule.head_sizes() if choice.rule is not None else {})
  except ValueError as e:
    raise UserError(one_line(e)) from None
  # An agent kind other than the obs kind's default takes that agent's defaults.
  own = d if kind == d.agent else DEFAULTS["index" if kind == "tabular" else "vector"]
  pick = lambda given, name, default: given or getattr(settings, name, None) or default
  b, t = fit_batch(int(steps), int(pick(num_envs, "num_envs", d.num_envs)),
                   int(pick(rollout_len, "rollout_len", d.rollout_len)), source.host,
                   fixed_b=num_envs is not None, fixed_t=rollout_len is not None)
  num_updates = max(1, math.ceil(int(steps) / (b * t)))
  h = artifact_hypers(loaded_rule if ALGOS[algo].needs_rule else None, kind, learning_rate,
                      pick(None, "learning_rate", own.learning_rate), num_updates)
  lr = h["learning_rate"] * float(lr_scale)
  choice = ALGOS[algo].with_settings(choice, with_run_values(settings, b, t, lr))
  run = RunConfig(agent=agent_config,
                  optimizer=OptimizerConfig(name=own.optimizer, max_grad_norm=MAX_GRAD_NORM),
                  learning_rate=lr, alpha_y=h["alpha_y"], gamma=GAMMA, num_envs=b, rollout_len=t,
                  num_updates=num_updates, anneal_lr=bool(getattr(settings, "anneal_lr", False)))
  return RunPlan(source=source, choice=choice, steps=int(steps), seeds=int(seeds), out=out, run=run,
                 seed=int(seed), hyper_sources=h["sources"] | {"hidden": widths_src}
                 | ({"learning_rate": f"{h['sources']['learning_rate']} x {float(lr_scale):g}"}
                    if float(lr_scale) != 1.0 else {}))


MIN_UPDATES = 500     # [chosen] updates a default run gets at least, budget permitting
MIN_ENVS = 4          # [chosen] fewest parallel envs the rule picks
MIN_ROLLOUT = 5       # [chosen] shortest rollout the rule picks
HOST_MAX_ENVS = 16    # [chosen] most parallel envs by default through the host loop


def fit_batch(steps: int, b: int, t: int, host: bool, fixed_b: bool = False,
              fixed_t: bool = False) -> tuple[int, int]:
  """The small-budget rule: default ``B`` x ``T`` shrunk so the run gets enough updates.

  Through the host loop ``B`` is at most ``HOST_MAX_ENVS``.  Then, while ``steps / (B * T)``
  is under ``MIN_UPDATES``, ``B`` is halved (not below ``MIN_ENVS``), then ``T`` (not
  below ``MIN_ROLLOUT``).  A value given by flag is never changed.
  """
  if host and not fixed_b:
    b = min(b, HOST_MAX_ENVS)
  few = lambda: steps < MIN_UPDATES * b * t
  while few() and not fixed_b and b // 2 >= MIN_ENVS:
    b //= 2
  while few() and not fixed_t and t // 2 >= MIN_ROLLOUT:
    t //= 2
  return b, t


def algo_settings(algo: str, choice: Choice, kind: str) -> Any:
  """The algorithm's settings for observation (or agent) ``kind``: ``Algo.kind_settings``
  where it has them, else ``choice.settings``."""
  make = ALGOS[algo].kind_settings
  return choice.settings if make is None else make(kind)


def with_overrides(settings: Any, overrides: dict, algo: str) -> Any:
  """``settings`` with ``overrides`` (field name -> value); ``UserError`` for other names."""
  if not overrides:
    return settings
  names = [f.name for f in dataclasses.fields(settings)] if settings is not None else []
  bad = sorted(set(overrides) - set(names))
  if bad:
    raise UserError(f"--tune: {algo} has no setting {bad[0]!r}; choose lr, lr_scale, num_envs, "
                    f"rollout_len{''.join(', ' + n for n in names)}")
  try:
    return dataclasses.replace(settings, **overrides)
  except (TypeError, ValueError) as e:
    raise UserError(f"--tune: {one_line(e)}") from None


def with_run_values(settings: Any, num_envs: int, rollout_len: int, learning_rate: float) -> Any:
  """``settings`` with the run's ``B``, ``T`` and step size written into the fields it has
  of those names (so ``summary.json`` records what ran); ``UserError`` if they do not fit."""
  if settings is None:
    return None
  values = {"num_envs": num_envs, "rollout_len": rollout_len, "learning_rate": learning_rate}
  names = {f.name for f in dataclasses.fields(settings)}
  try:
    return dataclasses.replace(settings, **{k: v for k, v in values.items() if k in names})
  except ValueError as e:
    raise UserError(one_line(e) + "; choose --num-envs / --rollout-len that fit") from None
