"""Typed configuration of a meta-training job, and its presets.

Every default notes its source: [ported] from a public reproduction (LPG_SPEC),
[firm] from the paper, [chosen] by us (with the reason).  Derived values are
properties.  Configs round-trip through JSON (``to_dict`` / ``from_dict``) so a
run directory records exactly what ran.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from lpg.meta_objective import MetaConfig
from lpg.metagenrl import MetaGenRLConfig
from lpg.rule import LPGConfig
from meta_train.metagenrl import MetaGenRLTrainConfig

# Candidate inner hyperparameters of the balancing bandit (LPG_SPEC section 4).
# Tabular agents use plain SGD on a mean loss, so their step sizes are large
# [ported: {20, 40, 80, 160, 320}]; network agents use Adam [chosen: around
# the ported 5e-4 .. 1e-3].
TABULAR_LRS = (20.0, 40.0, 80.0, 160.0, 320.0)
NETWORK_LRS = (2e-4, 5e-4, 1e-3, 2e-3, 4e-3)
ALPHA_YS = (0.1, 0.5, 1.0)  # [ported]
TUPLE_FIELDS = ("envs", "mlp_hidden", "tabular_lrs", "network_lrs", "alpha_ys", "validate_envs")
# Fields of configs written by earlier versions that no longer exist (dropped on load).
RETIRED_FIELDS = ("fault_injection_step",)
META_OPTIMIZERS = ("gradient", "es")
# Rule families (``--family``) and their rule configs (``lpg.artifact.BUILDERS``).
RULE_CONFIGS = {"lpg": LPGConfig, "metagenrl": MetaGenRLConfig}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A meta-training job.

  Attributes:
    envs: training environment names (a suite is expanded by the CLI).
    agents_per_env: lifetimes per environment; the population is
      ``agents_per_env * len(envs)`` [chosen per preset; GROOVE port: 512 total].
    num_updates: meta-updates to run.
    lifetime_updates: inner updates in one lifetime before the agent is
      re-initialised on a new task [ported order: 2,500 x 64 x 20 steps for
      tabular worlds; presets shorten it to fit their budget].
    rule: LPG network sizes.
    meta: K, rollout sizes, meta-objective weights.
    meta_lr: Adam step of the rule [ported: 1e-4].
    meta_max_grad_norm: global-norm clip of the meta-gradient [ported: 0.5].
    rule_gamma: discount given to the rule (and to its agents) [ported: 0.99].
    mlp_hidden: hidden widths of MLP agents (random grids, distraction chain).
    bandit_temperature, bandit_bonus: softmax temperature over arm scores and
      exploration bonus ``bonus / sqrt(trials)`` [ported: 0.1 and 0.2].
    bandit_window: the arm score is an exponential moving average with
      weight ``1/bandit_window`` of finished lifetimes' normalised final
      returns [chosen: 10, the ported "mean of the last 10"].
    tabular_lrs, network_lrs: the bandit's candidate inner learning rates for
      tabular (SGD) and network (Adam) agents (see ``TABULAR_LRS``).
    alpha_ys: the bandit's candidate alpha_y (weight of the y-target loss).
    return_ema_decay: a lifetime's "final return" (credited to the bandit when
      it ends) is a moving average of its per-meta-update mean episode return,
      ``ema <- decay * ema + (1 - decay) * mean``, so it reflects the last few
      meta-updates rather than one noisy rollout [chosen: 0.7, about the last
      three meta-updates].
    stagger: start the first generation of lifetimes spread evenly over their
      lifetime (agent i of P at i/P of the way), so the population holds early,
      middle and late agents from the first meta-update; these staggered
      lifetimes are not credited to the bandit [chosen: on].
    agent_chunk: lifetimes of one environment whose meta-gradients are computed
      at once; the group is processed in sequential chunks of this size and
      the gradients summed (memory ~ chunk, not population).  0: all at once.
    updates_per_call: meta-updates scanned inside one compiled call.
    checkpoint_every: meta-updates between checkpoints (0: only at the end).
    log_every: meta-updates between lines of metrics.jsonl.
    keep_checkpoints: the most recent checkpoints kept in the run directory
      (older ones are deleted after a new one is written) [chosen: 2, so a
      checkpoint damaged on disk still leaves one to resume from].
    max_consecutive_skips: a run with this many non-finite meta-updates in a
      row stops, keeping its last good checkpoint.
    seed: master seed.
    validate_envs: held-out tasks (registered names, none of ``envs``) on which
      fresh agents are trained with the current rule (``meta_train.validation``).
    validate_every: meta-updates between validations (and one at the end);
      0 turns validation off.
    validate_updates: agent updates of one validation lifetime (rollouts of
      ``meta.rollout_len`` x ``meta.num_envs`` steps each).
    validate_seeds: validation lifetimes per task (vmapped).
    lifetime_updates_min: 0 (every lifetime lasts ``lifetime_updates``), or
      the lower bound of a log-uniform draw of each new lifetime's length N in
      ``[lifetime_updates_min, lifetime_updates]`` (``lpg.lifetime.sample_planned``;
      TA-LPG), so meta-training covers the horizons meta-testing uses.
    meta_optimizer: ``gradient`` (the truncated meta-gradient, ``meta_train.trainer``)
      or ``es`` (OpenES over whole forward-only lifetimes, ``meta_train.es_train``).
    es_population, es_sigma, es_lr: OpenES members per generation (even:
      antithetic pairs), perturbation scale and Adam step on the mean
      [defaults from ``meta_train.es.ESConfig``: 64, 0.1, 1e-2, TA-LPG corrected].
    es_window: the final fraction of a lifetime whose returns make its fitness
      (1: the whole lifetime) [chosen: 1].
    es_seeds: lifetimes per training env in one member's fitness [chosen: 1].
    es_entropy_coef: weight of a fitness bonus for the agents' mean policy entropy over
      the window, divided by ``log |A|`` (``lpg.lifetime.fitness``): the meta-gradient
      objective's entropy term (``MetaConfig.entropy_coef``) for ES, whose return-only
      fitness rewards rules that make agents stop exploring early [chosen: 0, off].
    With ``es`` a generation counts as one meta-update; each member lives one
    lifetime of N updates per env and seed (N: ``lifetime_updates``, or drawn
    log-uniformly from ``[lifetime_updates_min, lifetime_updates]`` once per
    generation, shared by all members).
    family: ``lpg`` (``rule`` is an ``LPGConfig``) or ``metagenrl`` (``rule`` is a
      ``MetaGenRLConfig``; meta-trained through a critic, ``meta_train.metagenrl_job``).
    mgenrl: with ``metagenrl``, the critic, replay and meta-objective settings
      (``MetaGenRLTrainConfig``); its population, rollout, K, discount, meta step,
      clip and lifetime fields are taken from this config's ``agents_per_env``,
      ``meta``, ``rule_gamma``, ``meta_lr``, ``meta_max_grad_norm`` and
      ``lifetime_updates`` (``metagenrl_job.mgenrl_config``).
    curriculum: ``off``, or how the levels of procedurally generated training
      families (``procgen/tabular|random|chain``) are drawn per lifetime:
      ``learnability`` or ``regret`` level replay (``meta_train.levels``;
      GROOVE / PLR) [chosen: off].  Gradient meta-optimiser only.
  """
  envs: tuple[str, ...] = ("tabular/dense", "chain/short")
  agents_per_env: int = 4
  num_updates: int = 40
  lifetime_updates: int = 60
  rule: LPGConfig | MetaGenRLConfig = LPGConfig(hidden=32)
  meta: MetaConfig = MetaConfig(num_inner=3, rollout_len=20, num_envs=16)
  meta_lr: float = 1e-3
  meta_max_grad_norm: float = 0.5
  rule_gamma: float = 0.99
  mlp_hidden: tuple[int, ...] = (64,)
  bandit_temperature: float = 0.1
  bandit_bonus: float = 0.2
  bandit_window: int = 10
  tabular_lrs: tuple[float, ...] = TABULAR_LRS
  network_lrs: tuple[float, ...] = NETWORK_LRS
  alpha_ys: tuple[float, ...] = ALPHA_YS
  return_ema_decay: float = 0.7
  stagger: bool = True
  agent_chunk: int = 0
  updates_per_call: int = 1
  checkpoint_every: int = 20
  log_every: int = 5
  keep_checkpoints: int = 2
  max_consecutive_skips: int = 10
  seed: int = 0
  validate_envs: tuple[str, ...] = ()
  validate_every: int = 0
  validate_updates: int = 60
  validate_seeds: int = 2
  lifetime_updates_min: int = 0
  meta_optimizer: str = "gradient"
  es_population: int = 64
  es_sigma: float = 0.1
  es_lr: float = 1e-2
  es_window: float = 1.0
  es_seeds: int = 1
  es_entropy_coef: float = 0.0
  family: str = "lpg"
  mgenrl: MetaGenRLTrainConfig | None = None
  curriculum: str = "off"

  def __post_init__(self):
    for f in ("agents_per_env", "lifetime_updates", "updates_per_call", "log_every",
              "bandit_window", "max_consecutive_skips", "keep_checkpoints"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"{f.replace('_', '-')} must be >= 1, got {getattr(self, f)}")
    for f in ("validate_updates", "validate_seeds"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"{f.replace('_', '-')} must be >= 1, got {getattr(self, f)}")
    overlap = sorted(set(self.validate_envs) & set(self.envs))
    if overlap:
      raise ValueError(f"--validate-envs {','.join(overlap)} are training envs; held-out "
                       "validation needs tasks outside --envs")
    for f in ("num_updates", "checkpoint_every", "validate_every"):
      if int(getattr(self, f)) < 0:
        raise ValueError(f"{f.replace('_', '-')} must be >= 0, got {getattr(self, f)}")
    if self.agent_chunk < 0 or (self.agent_chunk and self.agents_per_env % self.agent_chunk):
      raise ValueError(f"agent-chunk ({self.agent_chunk}) must divide agents-per-env "
                       f"({self.agents_per_env})")
    if not self.envs:
      raise ValueError("at least one training environment is needed")
    if not (math.isfinite(self.meta_lr) and self.meta_lr > 0):
      raise ValueError(f"meta-lr must be a finite number > 0, got {self.meta_lr}")
    if not 0.0 <= self.return_ema_decay < 1.0:
      raise ValueError(f"return-ema-decay must lie in [0, 1), got {self.return_ema_decay}")
    for f in ("tabular_lrs", "network_lrs", "alpha_ys"):
      values = getattr(self, f)
      if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{f.replace('_', '-')} must be finite numbers > 0, got {values}")
    if self.lifetime_updates_min and not (
        self.meta.num_inner <= self.lifetime_updates_min <= self.lifetime_updates):
      raise ValueError(f"lifetime-updates-min ({self.lifetime_updates_min}) must lie between K "
                       f"({self.meta.num_inner}) and lifetime-updates ({self.lifetime_updates})")
    self._check_es()
    self._check_family()
    self._check_curriculum()
    if self.lifetime_updates < self.meta.num_inner:
      raise ValueError(f"lifetime-updates ({self.lifetime_updates}) must be >= K "
                       f"({self.meta.num_inner})")

  def _check_es(self):
    if self.meta_optimizer not in META_OPTIMIZERS:
      raise ValueError(f"meta-optimizer must be one of {', '.join(META_OPTIMIZERS)}, got "
                       f"{self.meta_optimizer!r}")
    if int(self.es_population) < 2 or int(self.es_population) % 2:
      raise ValueError(f"es-population must be even and >= 2 (antithetic pairs), got "
                       f"{self.es_population}")
    for f in ("es_sigma", "es_lr"):
      if not (math.isfinite(getattr(self, f)) and getattr(self, f) > 0):
        raise ValueError(f"{f.replace('_', '-')} must be a finite number > 0, got "
                         f"{getattr(self, f)}")
    if not 0.0 < self.es_window <= 1.0:
      raise ValueError(f"es-window must lie in (0, 1], got {self.es_window}")
    if int(self.es_seeds) < 1:
      raise ValueError(f"es-seeds must be >= 1, got {self.es_seeds}")
    if not (math.isfinite(self.es_entropy_coef) and self.es_entropy_coef >= 0):
      raise ValueError(f"es-entropy-coef must be a finite number >= 0, got "
                       f"{self.es_entropy_coef}")

  def _check_family(self):
    if self.family not in RULE_CONFIGS:
      raise ValueError(f"family must be one of {', '.join(RULE_CONFIGS)}, got {self.family!r}")
    if not isinstance(self.rule, RULE_CONFIGS[self.family]):
      raise ValueError(f"a {self.family} run needs a {RULE_CONFIGS[self.family].__name__} rule; "
                       f"choose a preset of that family")
    if self.family == "metagenrl" and (self.meta_optimizer != "gradient"
                                       or self.lifetime_updates_min):
      raise ValueError("--family metagenrl is meta-trained through its critic: it takes neither "
                       "--meta-optimizer es nor --lifetime-updates-min")
  def _check_curriculum(self):
    from envs.procgen import TRAIN_NAMES
    from meta_train.levels import MODES
    if self.curriculum not in MODES:
      raise ValueError(f"curriculum must be one of {', '.join(MODES)}, got {self.curriculum!r}")
    if self.curriculum == "off":
      return
    if not set(self.envs) & set(TRAIN_NAMES):
      raise ValueError(f"--curriculum {self.curriculum} draws levels of procedurally generated "
                       f"families; add one of {', '.join(TRAIN_NAMES)} to --envs, or drop it")
    if not isinstance(self.rule, LPGConfig):
      raise ValueError(f"--curriculum {self.curriculum} works with LPG rules (the gradient "
                       "trainer's lifetime turnover); drop it")
    if self.meta_optimizer != "gradient":
      raise ValueError(f"--curriculum {self.curriculum} needs --meta-optimizer gradient (ES "
                       "draws its members' levels per generation); drop one of them")
    if self.curriculum == "learnability" and "procgen/random" in self.envs:
      raise ValueError("--curriculum learnability needs per-level reference returns, which "
                       "procgen/random lacks; use --curriculum regret")

  @property
  def validating(self) -> bool:
    return bool(self.validate_envs) and self.validate_every > 0

  @property
  def population(self) -> int:
    return self.agents_per_env * len(self.envs)

  @property
  def agent_steps_per_update(self) -> int:
    """Environment steps the whole population takes per meta-update (with ``es``, per
    generation, counting full-length lifetimes: an upper bound with random lengths)."""
    if self.family == "metagenrl":   # one rollout per agent per meta-update
      return self.population * self.meta.rollout_len * self.meta.num_envs
    if self.meta_optimizer == "es":
      return (self.es_population * self.es_seeds * len(self.envs) * self.lifetime_updates
              * self.meta.rollout_len * self.meta.num_envs)
    return self.population * self.meta.agent_steps_per_update

  # ------------------------------------------------------------------ JSON
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown config fields {sorted(unknown)}")
    if "rule" in d:
      d["rule"] = RULE_CONFIGS[d.get("family", "lpg")](**d["rule"])
    if d.get("mgenrl") is not None:
      d["mgenrl"] = MetaGenRLTrainConfig(**d["mgenrl"])
    if "meta" in d:
      d["meta"] = MetaConfig(**d["meta"])
    for f in TUPLE_FIELDS:
      if f in d:
        d[f] = tuple(d[f])
    return cls(**d)


PRESETS: dict[str, TrainConfig] = {
    # Seconds, for tests and CI: one chain, two lifetimes, a tiny rule.
    "tiny": TrainConfig(
        envs=("chain/short",), agents_per_env=2, num_updates=4, lifetime_updates=8,
        rule=LPGConfig(hidden=8, y_dim=4, phi_hidden=4),
        meta=MetaConfig(num_inner=2, rollout_len=8, num_envs=4), checkpoint_every=2, log_every=1,
        validate_envs=("chain/long",), validate_every=0, validate_updates=8),
    # A few minutes on 2 CPU cores: two small worlds, a 32-wide rule.
    # Validation: two held-out toy worlds, 60 updates x 2 seeds every 10 meta-updates.
    "smoke": TrainConfig(validate_envs=("chain/long", "tabular/sparse"), validate_every=10),
    # A real CPU run: all 15 worlds, a 64-wide rule (16x cheaper than 256 on
    # CPU, LPG_SPEC 6b), 4 lifetimes per world, short lifetimes.
    "cpu": TrainConfig(
        envs=("all",), agents_per_env=4, num_updates=3000, lifetime_updates=500,
        rule=LPGConfig(hidden=64), meta=MetaConfig(num_inner=5, rollout_len=20, num_envs=32),
        meta_lr=3e-4, checkpoint_every=100, log_every=10,
        validate_envs=("CartPole",), validate_every=100, validate_updates=200),
    # An accelerator run close to the reproductions' scale: 256-wide rule,
    # 32 lifetimes per world (480), 64 envs x 20 steps, K = 5.
    "gpu": TrainConfig(
        envs=("all",), agents_per_env=32, num_updates=5000, lifetime_updates=1000,
        rule=LPGConfig(hidden=256), meta=MetaConfig(num_inner=5, rollout_len=20, num_envs=64),
        meta_lr=1e-4, checkpoint_every=100, log_every=10, updates_per_call=1,
        # Two MinAtar games at 800 x 20 x 64 = 1.02M steps per lifetime, and CartPole.
        validate_envs=("Breakout", "SpaceInvaders", "CartPole"), validate_every=100,
        validate_updates=800, validate_seeds=2),
    # Evolution strategies (--meta-optimizer es), seconds, for tests: the tiny
    # preset's world with a lifetime-aware rule, 4 members, N in [4, 8].
    "es-tiny": TrainConfig(
        envs=("chain/short",), num_updates=4, lifetime_updates=8, lifetime_updates_min=4,
        rule=LPGConfig(hidden=8, y_dim=4, phi_hidden=4, lifetime_inputs=True),
        meta=MetaConfig(num_inner=2, rollout_len=8, num_envs=4), checkpoint_every=2,
        log_every=1, validate_envs=("chain/long",), validate_every=2, validate_updates=8,
        meta_optimizer="es", es_population=4),
    # A real ES run on 2 CPU cores: the smoke worlds, a 32-wide lifetime-aware
    # rule, 32 members x 2 seeds, whole lifetimes of N in [10, 60] updates.
    "es-cpu": TrainConfig(
        num_updates=300, lifetime_updates=60, lifetime_updates_min=10,
        rule=LPGConfig(hidden=32, lifetime_inputs=True), checkpoint_every=20, log_every=5,
        validate_envs=("chain/long", "tabular/sparse"), validate_every=20,
        meta_optimizer="es", es_population=32, es_seeds=2),
    # ES on an accelerator: all 15 worlds, a 256-wide lifetime-aware rule, 128
    # members (64 antithetic pairs) x 1 lifetime per world, whole lifetimes of N
    # log-uniform in [50, 500] updates (TA-LPG's range scaled to our worlds),
    # 64 envs x 20 steps [chosen: the gpu preset's agents; population from the
    # corrected public settings' order, LPG_SPEC section 9]; validated like gpu.
    "es-gpu": TrainConfig(
        envs=("all",), num_updates=2000, lifetime_updates=500, lifetime_updates_min=50,
        rule=LPGConfig(hidden=256, lifetime_inputs=True),
        meta=MetaConfig(num_inner=5, rollout_len=20, num_envs=64),
        checkpoint_every=50, log_every=5,
        validate_envs=("Breakout", "SpaceInvaders", "CartPole"), validate_every=50,
        validate_updates=800, validate_seeds=2,
        meta_optimizer="es", es_population=128, es_seeds=1),
}

# The held-out validation tasks of the recipe ablation (meta_train.ablation): procgen
# validation levels of the three training families, and CartPole.
RECIPE_VALIDATION = ("procgen/tabular_val", "procgen/chain_val", "procgen/random_val",
                     "CartPole")


def recipe(base: TrainConfig, members: int, lifetimes: tuple[int, int],
           validate_envs: tuple[str, ...], validate_every: int) -> TrainConfig:
  """``base`` with the recipe the ablation picked (artifacts/ablations/README.md, variant
  ``esnorm``): ES of ``members`` members x 1 whole lifetime per world, N log-uniform in
  ``lifetimes`` (min, max) updates, sign-log normalised reward inputs, validated every
  ``validate_every`` generations and checkpointed every 10 (a killed run loses little)."""
  return dataclasses.replace(
      base, rule=dataclasses.replace(base.rule, signlog_reward=True, normalise_reward=True),
      meta_optimizer="es", es_population=members, lifetime_updates_min=lifetimes[0],
      lifetime_updates=lifetimes[1], validate_envs=validate_envs,
      validate_every=validate_every, checkpoint_every=10)


PRESETS.update({
    # The cpu preset with the recipe, for runs longer than the ablation's budget: 16
    # members, N in [20, 100]; an ES generation takes ~40 s on 2 cores (a checkpoint and
    # rule_best.pkl every ~7 min).  tests/test_ablation.py: equal to the ablation's
    # `esnorm` variant at cpu scale but for the checkpoint interval.
    "recipe-cpu": recipe(PRESETS["cpu"], 16, (20, 100), RECIPE_VALIDATION, 3),
    # The gpu preset with the recipe, for the first accelerator run: 128 members, N in
    # [50, 500], validated also on two MinAtar games (the same test at gpu scale).
    "recipe-gpu": recipe(PRESETS["gpu"], 128, (50, 500),
                         RECIPE_VALIDATION + ("Breakout", "SpaceInvaders"), 10),
})

# MetaGenRL (--family metagenrl; meta_train.metagenrl_job).  Agents' step sizes: one
# candidate per kind [chosen: tabular SGD 10, as the tested tabular preset; network Adam
# 1e-3]; critic, replay and meta-objective settings of meta_train.metagenrl.PRESETS
# ["tabular"] (critic Adam 0.1 for tabular critics, Peng's Q(lambda 0.9), the update's own
# states scored, entropy bonus 0.01).
_MGENRL = MetaGenRLTrainConfig(buffer_segments=128, batch_segments=8, critic_lr=0.1,
                               critic_lambda=0.9, held_out=False, entropy_coef=0.01)
_MGENRL_ARMS = dict(tabular_lrs=(10.0,), network_lrs=(1e-3,), alpha_ys=(0.5,))
PRESETS.update({
    # Seconds, for tests: the tiny preset's world, a 4-wide objective, 2 agents.
    "mgenrl-tiny": TrainConfig(
        family="metagenrl", envs=("chain/short",), agents_per_env=2, num_updates=4,
        lifetime_updates=8, rule=MetaGenRLConfig(hidden=4),
        meta=MetaConfig(num_inner=1, rollout_len=8, num_envs=4), meta_lr=3e-3,
        checkpoint_every=2, log_every=1, validate_envs=("chain/long",), validate_every=2,
        validate_updates=8, mgenrl=dataclasses.replace(_MGENRL, buffer_segments=16,
                                                       batch_segments=2), **_MGENRL_ARMS),
    # A real CPU run, the scale of the lpg cpu preset: all 15 worlds (tabular and MLP
    # agents), 4 agents per world, lifetimes of 500 updates, a 32-wide objective [code:
    # obj_func_lstm_units 32], 16 envs x 20 steps, K = 1 [code], validated on CartPole
    # and two held-out toy worlds every 100 meta-updates.
    "mgenrl-cpu": TrainConfig(
        family="metagenrl", envs=("all",), agents_per_env=4, num_updates=3000,
        lifetime_updates=500, rule=MetaGenRLConfig(hidden=32),
        meta=MetaConfig(num_inner=1, rollout_len=20, num_envs=16), meta_lr=3e-4,
        meta_max_grad_norm=1.0, checkpoint_every=100, log_every=10,
        validate_envs=("CartPole",), validate_every=100, validate_updates=200,
        mgenrl=_MGENRL, **_MGENRL_ARMS),
})
