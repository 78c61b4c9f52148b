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

from lpg.cli import UserError
from lpg.rule import UpdateRule
from lpg.types import PyTree
from meta_test.baselines import A2CConfig, A2CRule, RandomRule
from meta_test.mgrl import MGRLConfig, MGRLRule, make_mgrl_train
from meta_test.train import RunConfig, TrainFns, make_train


@dataclasses.dataclass(frozen=True)
class Choice:
  """An algorithm ready to train.

  Attributes:
    algo: its name in ``ALGOS``.
    rule: the update rule (None for an algorithm with its own loop).
    params: the rule's frozen parameters.
    settings: the algorithm's configuration (a frozen dataclass) or None.
    path, checksum: the rule artifact given with ``--rule``, if any.
  """
  algo: str
  rule: UpdateRule | None
  params: PyTree
  settings: Any = None
  path: str | None = None
  checksum: str | None = None

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
  """
  help: str
  make: Callable[[Any], Choice]
  train: Callable[..., TrainFns] = rule_train
  host: bool = True
  needs_rule: bool = False


def _lpg(loaded) -> Choice:
  return Choice("lpg", loaded.rule, loaded.params, loaded.config)


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


ALGOS: dict[str, Algo] = {
    "lpg": Algo("the learned rule of --rule (LPG)", _lpg, needs_rule=True),
    "a2c": Algo("advantage actor-critic with GAE (meta_test.baselines)", _a2c),
    "random": Algo("the uniform random policy", _random),
    "mgrl": Algo("meta-gradient RL: A2C learning its gamma and lambda online (meta_test.mgrl)",
                 _mgrl, train=_mgrl_train, host=False),
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
