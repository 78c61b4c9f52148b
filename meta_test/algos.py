"""The algorithms ``lpg-apply`` and ``lpg-report`` train: one table, name -> ``Algo``.

A new algorithm joins by adding one entry to ``ALGOS``:

* an update rule behind ``lpg.rule.UpdateRule`` (trained by ``meta_test.train.make_train``
  and, on host environments, by ``meta_test.host``) needs only ``make``;
* an algorithm with a training loop of its own (PPO's epochs of minibatches, say) gives
  ``train(env, run_config, choice, env_params=None) -> TrainFns``, e.g. through
  ``meta_test.train.whole_run_fns``, and ``host=False``;
* a meta-gradient variant passes a ``meta_test.train.MetaHook`` to ``make_train``
  (``mgrl``).

``Choice.settings`` (a frozen dataclass, or None) is the algorithm's own configuration: it is
written to ``summary.json`` and is part of the settings a resumed report run must match.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Callable

import jax.numpy as jnp

from lpg.cli import UserError
from lpg.rule import UpdateRule
from lpg.types import PyTree
from meta_test.baselines import A2C_DEFAULTS, A2CConfig, A2CRule, RandomRule
from meta_test.mgrl import MGRLConfig, MGRLRule, make_mgrl_train
from meta_test.ppo import PPO_DEFAULTS, PPOConfig, make_train_fns as make_ppo_fns
from meta_test.train import RunConfig, TrainFns, UpdateMetrics, make_train


@dataclasses.dataclass(frozen=True)
class Choice:
  """An algorithm ready to train.

  Attributes:
    algo: its name in ``ALGOS``.
    rule: the update rule (None for an algorithm with its own loop).
    params: the rule's frozen parameters.
    settings: the algorithm's configuration (a frozen dataclass) or None.
    path, checksum: the rule artifact given with ``--rule``, if any.
    family: the artifact's rule family (``lpg``, ``metagenrl``) for ``--algo lpg``.
  """
  algo: str
  rule: UpdateRule | None
  params: PyTree
  settings: Any = None
  path: str | None = None
  checksum: str | None = None
  family: str | None = None

  def settings_dict(self) -> dict:
    return dataclasses.asdict(self.settings) if self.settings is not None else {}


def rule_train(env, config: RunConfig, choice: Choice, env_params: PyTree | None = None
               ) -> TrainFns:
  """The compiled run of an update rule: ``make_train`` with the choice's rule."""
  return make_train(env, config, choice.rule, choice.params, env_params=env_params)


@dataclasses.dataclass(frozen=True)
class Algo:
  """One entry of ``ALGOS``.

  Attributes:
    help: one line for ``--help``.
    make: ``loaded rule artifact or None -> Choice`` (without path / checksum).
    train: ``(env, RunConfig, Choice, env_params=None) -> TrainFns``, the compiled run.
    host: whether it also trains on host environments (``atari/...``, ``module:factory``)
      through ``meta_test.host`` (needs ``Choice.rule``).
    needs_rule: whether it needs ``--rule`` (its checksum is then part of its settings).
    kind_settings: optional ``obs kind -> settings`` (a frozen dataclass replacing
      ``Choice.settings``); its ``learning_rate``, ``num_envs`` and ``rollout_len``
      fields, where it has them, are the run's defaults when no flag is given, and the
      plan writes the values it uses back into them (``meta_test.plan.make_plan``).
    with_settings: ``(Choice, settings) -> Choice`` with those settings (and a rule
      rebuilt from them where the rule holds them).
    learns: whether it has anything to tune (``lpg-report --tune`` skips it otherwise).
  """
  help: str
  make: Callable[[Any], Choice]
  train: Callable[..., TrainFns] = rule_train
  host: bool = True
  needs_rule: bool = False
  kind_settings: Callable[[str], Any] | None = None
  with_settings: Callable[[Choice, Any], Choice] = (
      lambda choice, settings: dataclasses.replace(choice, settings=settings))
  learns: bool = True


def _lpg(loaded) -> Choice:
  """A learned rule of any family ``lpg.artifact.BUILDERS`` knows (LPG, MetaGenRL)."""
  return Choice("lpg", loaded.rule, loaded.params, loaded.config, family=loaded.family)


def _a2c(loaded) -> Choice:
  del loaded
  config = A2CConfig()
  return Choice("a2c", A2CRule(config), {}, config)


def _random(loaded) -> Choice:
  del loaded
  return Choice("random", RandomRule(), {})


def _mgrl(loaded) -> Choice:
  del loaded
  config = MGRLConfig()
  return Choice("mgrl", MGRLRule(config), None, config)


def _mgrl_train(env, config: RunConfig, choice: Choice, env_params=None) -> TrainFns:
  return make_mgrl_train(env, config, choice.rule, env_params=env_params)


def _ppo(loaded) -> Choice:
  del loaded
  return Choice("ppo", None, None, PPOConfig())


def as_update_metrics(m) -> UpdateMetrics:
  """``UpdateMetrics`` from metrics whose first five fields are its own (``PPOMetrics``)."""
  return UpdateMetrics(*m[:5], meta_loss=jnp.zeros_like(m.loss), meta_params={})


def _ppo_train(env, config: RunConfig, choice: Choice, env_params=None) -> TrainFns:
  """PPO's compiled run (``meta_test.ppo``) on ``config``'s agent, ``B``, ``T``, ``U``, step
  size, discount and gradient clipping; its other settings from ``choice.settings``."""
  ppo = dataclasses.replace(choice.settings, num_envs=int(config.num_envs),
                            rollout_len=int(config.rollout_len),
                            learning_rate=float(config.learning_rate), gamma=float(config.gamma),
                            max_grad_norm=float(config.optimizer.max_grad_norm))
  fns = make_ppo_fns(ppo, env, config.agent, config.num_updates, chunk=config.chunk_size,
                     env_params=env_params)
  convert = lambda out: (out[0], as_update_metrics(out[1]))
  return fns._replace(run_chunk=lambda state, offset: convert(fns.run_chunk(state, offset)),
                      train=lambda key: convert(fns.train(key)))


ALGOS: dict[str, Algo] = {
    "lpg": Algo("the learned rule of --rule (LPG or MetaGenRL, by the artifact's family)", _lpg,
                needs_rule=True),
    "a2c": Algo("advantage actor-critic with GAE (meta_test.baselines)", _a2c,
                kind_settings=lambda kind: A2C_DEFAULTS[kind],
                with_settings=lambda choice, s: dataclasses.replace(choice, rule=A2CRule(s),
                                                                    settings=s)),
    "random": Algo("the uniform random policy", _random, learns=False),
    "mgrl": Algo("meta-gradient RL: A2C learning its gamma and lambda online (meta_test.mgrl)",
                 _mgrl, train=_mgrl_train, host=False),
    "ppo": Algo("proximal policy optimisation (meta_test.ppo; registered envs only)", _ppo,
                train=_ppo_train, host=False, kind_settings=lambda kind: PPO_DEFAULTS[kind]),
}


def unknown_algo_message(name: str, flag: str = "--algo") -> str:
  close = difflib.get_close_matches(name, list(ALGOS), n=1)
  hint = f"did you mean {close[0]!r}? " if close else ""
  return f"{flag}: unknown algorithm {name!r}; {hint}choose from {', '.join(ALGOS)}"


def make_choice(algo: str, loaded=None, rule_path: str | None = None) -> Choice:
  """The ``Choice`` for ``algo``; ``loaded`` is the rule artifact of ``rule_path``, if any.

  Raises ``UserError`` for an unknown name or a missing rule.
  """
  if algo not in ALGOS:
    raise UserError(unknown_algo_message(algo))
  entry = ALGOS[algo]
  if entry.needs_rule and loaded is None:
    raise UserError(f"--algo {algo} needs --rule PATH (a rule artifact .pkl)")
  choice = entry.make(loaded)
  if loaded is None:
    return choice
  return dataclasses.replace(choice, checksum=loaded.checksum,
                             path=os.path.abspath(rule_path) if rule_path else None)
