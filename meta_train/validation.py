"""Held-out validation of the rule during meta-training, and the best rule so far.

``make_validator(setup, out)`` builds one compiled function
``scores(rule_params, learning_rates [V, G], alpha_ys [V, G]) -> [V, G]`` that trains
``validate_seeds`` fresh agents (vmapped) per grid point of inner
hyperparameters with the given rule on each of the ``V`` validation tasks (``lpg.lifetime``: forward only, one ``lax.scan`` per
lifetime) and returns each task's mean episode return over the last
``WINDOW`` of the lifetimes.  The rule and the inner hyperparameters are
arguments, so every validation call of a run reuses the one compilation; the
keys are fixed per run (common random numbers), so two rules are compared on
the same tasks, agents and environment noise.

Scores are normalised per task as ``(R - R_random) / (R_opt - R_random)``:
with ``envs.returns.reference_pair`` where the table knows the optimum (CartPole's
is 500), with ``envs.returns.family_pair`` (means over 256 drawn levels) for
procedural tabular and chain families; else (Acrobot, MinAtar, random grids) with the uniform-random policy's return measured
once (``envs.returns.random_return``) and ``R_opt - R_random`` replaced by
``max(|R_random|, 1)``: the score is then the improvement over the random
policy in units of its return.  The baselines are cached in ``DIR/validation_baselines.json``.
The run's validation score is the mean of its tasks' scores.

Which inner hyperparameters validation agents get: a fixed grid per agent kind,
not the bandit's current favourite (``grid``): the lowest, middle and highest of
the kind's candidate learning rates (``tabular_lrs`` / ``network_lrs``) with the
middle ``alpha_y``; every grid point trains ``validate_seeds`` agents on the same
keys and a task scores its best grid point.  So a validation score measures the
rule alone, tuned over the same few step sizes at every validation (a pilot in
which validation followed the bandit's arm saw CartPole's score jump 4.2 -> 0.6
-> 8.9 as the arm switched, ``artifacts/ablations/README.md``).

Which meta-test settings an artifact carries (``extras["meta_test"][kind]``, what
``lpg-apply`` uses unless told otherwise): ``rule.pkl`` records ``settled``, the
bandit's favourite arm per kind (the middle candidates under ES, which has no
bandit); ``rule_best.pkl`` records ``chosen_settings`` of the validation that chose
it: per agent kind, the one grid point with the highest mean score over that
kind's validation tasks (one setting per kind, since a user's task is not one of
them).
"""
from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lpg.lifetime import LifetimeConfig, fitness, make_lifetime
from lpg.rule import make_hypers
from lpg.types import PyTree
from meta_train import bandit

WINDOW = 0.25  # the final quarter of a validation lifetime counts
BASELINES = "validation_baselines.json"
RULE_BEST = "rule_best.pkl"


class Best(NamedTuple):
  """The best validated rule so far (host arrays; checkpointed with the state)."""
  score: np.ndarray         # [] float32, -inf before the first validation.
  step: np.ndarray          # [] int32 meta-update it was validated at, -1 before.
  rule_params: PyTree


class JobState(NamedTuple):
  """What a validating job checkpoints: the training state and the best rule."""
  train: object             # trainer.TrainState
  best: Best


def initial_best(rule_params: PyTree) -> Best:
  return Best(np.asarray(-np.inf, np.float32), np.asarray(-1, np.int32),
              jax.tree_util.tree_map(np.asarray, jax.device_get(rule_params)))


def improved(best: Best, score: float, step: int, rule_params: PyTree) -> Best:
  """``best`` replaced by the rule at ``step`` if ``score`` is finite and higher."""
  if not np.isfinite(score) or score <= float(best.score):
    return best
  return Best(np.asarray(score, np.float32), np.asarray(step, np.int32),
              jax.tree_util.tree_map(np.asarray, jax.device_get(rule_params)))


def kind_of(name: str) -> str:
  import envs
  return "tabular" if envs.make(name).obs_spec.kind == "index" else "network"


def settled(setup, bandit_state) -> dict:
  """Per agent kind the bandit's favourite arm: ``{kind: {learning_rate, alpha_y, probability}}``.

  A bandit with no preference yet (equal probabilities) gives the middle candidates.

  The arm probabilities (``bandit.probabilities``) are averaged over the training
  envs of that kind; ``lifetime_updates`` is the lifetime length trained for;
  ``hidden`` (network kinds) the widths of the MLP agents the rule trained.
  """
  c = setup.config
  probs = np.asarray(bandit.probabilities(bandit_state, c.bandit_temperature, c.bandit_bonus))
  kinds = [kind_of(name) for name in c.envs]
  out = {}
  for kind in dict.fromkeys(kinds):
    rows = [e for e, k in enumerate(kinds) if k == kind]
    mean = probs[rows].mean(0)
    arm = int(np.argmax(mean)) if np.ptp(mean) > 1e-6 else _middle_arm(setup, rows[0], kind)
    lr, ay = setup.arm_table[rows[0], arm]
    out[kind] = {"learning_rate": float(lr), "alpha_y": float(ay),
                 "probability": float(mean[arm]), "lifetime_updates": int(c.lifetime_updates)}
    if kind != "tabular":
      out[kind]["hidden"] = [int(h) for h in c.mlp_hidden]
    if c.lifetime_updates_min:
      out[kind]["lifetime_updates_min"] = int(c.lifetime_updates_min)
  return out


def _middle_arm(setup, env_index: int, kind: str) -> int:
  """The arm of the middle candidates: what an untried bandit (no preference yet, e.g. at
  the start of a run or under ES, which has no bandit) settles on, rather than arm 0."""
  mid = _fallback(setup.config, kind)
  table = np.asarray(setup.arm_table[env_index])          # [A, 2] (learning rate, alpha_y)
  distance = np.abs(np.log(table[:, 0] / mid["learning_rate"])) + np.abs(table[:, 1] - mid["alpha_y"])
  return int(np.argmin(distance))


def _fallback(config, kind: str) -> dict:
  lrs = config.tabular_lrs if kind == "tabular" else config.network_lrs
  return {"learning_rate": float(lrs[len(lrs) // 2]),
          "alpha_y": float(config.alpha_ys[len(config.alpha_ys) // 2])}


def grid(config, kind: str) -> tuple[tuple[float, float], ...]:
  """The fixed ``(learning_rate, alpha_y)`` points validation tries for agents of ``kind``:
  the lowest, middle and highest candidate learning rate (fewer if there are fewer
  candidates), each with the middle ``alpha_y``."""
  lrs = config.tabular_lrs if kind == "tabular" else config.network_lrs
  picks = sorted({lrs[0], lrs[len(lrs) // 2], lrs[-1]})
  alpha_y = config.alpha_ys[len(config.alpha_ys) // 2]
  return tuple((float(lr), float(alpha_y)) for lr in picks)


def hypers_for(config, kinds, points_of: Callable | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """``[V, G]`` learning rates and alpha_ys of the validation tasks of ``kinds``.

  ``points_of``: ``kind -> ((learning_rate, alpha_y), ...)`` (default ``grid``).  ``G`` is
  the largest grid; a kind with a smaller grid repeats its last point (a repeated point
  scores the same, so the best over the row is unchanged).
  """
  grids = [(points_of or (lambda k: grid(config, k)))(k) for k in kinds]
  width = max(len(g) for g in grids)
  rows = [list(g) + [g[-1]] * (width - len(g)) for g in grids]
  table = np.array(rows, np.float32).reshape(len(kinds), width, 2)
  return table[..., 0], table[..., 1]


def baselines(names, out: str | None) -> dict:
  """``{name: (R_opt, R_random)}`` for normalisation, cached in ``out``/``BASELINES``."""
  from envs import returns
  path = os.path.join(out, BASELINES) if out else None
  cached = {}
  if path and os.path.isfile(path):
    with open(path) as f:
      cached = {k: tuple(v) for k, v in json.load(f).items()}
  refs = {}
  for name in names:
    ref = cached.get(name) or returns.reference_pair(name) or returns.family_pair(name)
    if ref is None:
      rand = float(returns.random_return(name))
      ref = (rand + max(abs(rand), 1.0), rand)
    refs[name] = tuple(float(x) for x in ref)
  if path and refs != cached and jax.process_index() == 0:
    from meta_train.checkpoint import atomic_write
    atomic_write(path, json.dumps({k: list(v) for k, v in refs.items()}, indent=1).encode())
  return refs


class Validator(NamedTuple):
  names: tuple[str, ...]
  kinds: tuple[str, ...]
  references: dict            # name -> (R_opt, R_random)
  scores: Callable            # (rule_params, lrs [V, G], alpha_ys [V, G]) -> [V, G] returns


def make_scores(setup, names, seed: int) -> Callable:
  """The compiled ``scores(rule_params, lrs [V, G], alpha_ys [V, G]) -> [V, G]`` mean returns.

  Every grid point of a task trains its agents on the same keys (common random numbers).
  """
  from meta_train.trainer import env_setup
  c = setup.config
  life = LifetimeConfig(c.validate_updates, c.meta.rollout_len, c.meta.num_envs)
  lifetimes = []
  for name in names:
    env, agent, opt, _ = env_setup(name, c)
    lifetimes.append(make_lifetime(env, setup.rule, agent, opt, life, diagnostics=False))
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)

  @jax.jit
  def scores(rule_params, lrs, ays):
    out = []
    for v, lifetime in enumerate(lifetimes):
      keys = jax.random.split(jax.random.fold_in(key, v), c.validate_seeds)

      def point(lr, ay, lifetime=lifetime, keys=keys):
        hypers = make_hypers(lr, ay, c.rule_gamma)
        trace = jax.vmap(lifetime, (None, None, 0))(rule_params, hypers, keys)
        return jnp.mean(fitness(trace, WINDOW))
      out.append(jax.vmap(point)(lrs[v], ays[v]))
    return jnp.stack(out)

  return scores


def normalised(value: float, reference: tuple[float, float]) -> float:
  """``(R - R_random) / (R_opt - R_random)`` of a return, ``reference`` ``(R_opt, R_random)``."""
  opt, rand = reference
  return (value - rand) / (opt - rand)


def chosen_settings(config, tasks: dict, kinds: dict, references: dict,
                    points_of: Callable | None = None) -> dict:
  """Per agent kind, the validation grid point best on average over the kind's tasks.

  ``tasks``: one validation's ``{task: {"grid_returns": [G], ...}}``; ``kinds``:
  ``{task: kind}``; ``references``: ``{task: (R_opt, R_random)}``; ``points_of``:
  ``kind -> ((learning_rate, alpha_y), ...)``, the points the returns belong to
  (default ``grid``).  Returns ``{kind: {learning_rate, alpha_y, validation_score (the
  mean normalised score at that point), validation_tasks}}``; a kind whose grid has no
  finite return gets its middle point.
  """
  out = {}
  for kind in dict.fromkeys(kinds[name] for name in tasks):
    names = [n for n in tasks if kinds[n] == kind]
    points = (points_of or (lambda k: grid(config, k)))(kind)
    scores = np.array([[normalised(r, references[n])
                        for r in tasks[n]["grid_returns"][:len(points)]] for n in names],
                      np.float64).reshape(len(names), len(points))
    finite = np.isfinite(scores)
    mean = np.where(finite.any(0), np.where(finite, scores, 0).sum(0)
                    / np.maximum(finite.sum(0), 1), -np.inf)
    g = int(np.argmax(mean)) if np.isfinite(mean).any() else len(points) // 2
    out[kind] = {"learning_rate": points[g][0], "alpha_y": points[g][1],
                 "validation_score": float(mean[g]) if np.isfinite(mean[g]) else None,
                 "validation_tasks": names}
  return out


def candidates(config, kind: str) -> tuple[tuple[float, float], ...]:
  """Every candidate learning rate of ``kind`` (``tabular_lrs`` / ``network_lrs``), each
  with the middle ``alpha_y``: the finer grid of ``lifetime_settings``."""
  lrs = config.tabular_lrs if kind == "tabular" else config.network_lrs
  alpha_y = config.alpha_ys[len(config.alpha_ys) // 2]
  return tuple((float(lr), float(alpha_y)) for lr in lrs)


def lifetime_settings(config, rule, rule_params, lifetimes, references: dict,
                      on_lifetime: Callable[[int], None] | None = None) -> dict:
  """Per agent kind, the meta-test settings chosen again for each lifetime length.

  The step size that suits a lifetime depends on its length: validation on the run's
  own lifetimes (``validate_updates``, ~200 updates) picks a step too large for an agent
  that makes thousands (e.g. MinAtar's ~3,900 in 5M steps).  For each ``N`` in
  ``lifetimes`` this runs the run's validation again (same tasks, keys, seeds and middle
  ``alpha_y``) with lifetimes of ``N`` updates at **every** candidate learning rate of each
  task's kind (``candidates``) and picks, per kind, the one with the best mean normalised
  score over the kind's tasks (``chosen_settings``).  Only validation tasks are used.

  ``rule``: the rule object (``LPGRule``); ``references``: ``{task: (R_opt, R_random)}``;
  ``on_lifetime(N)``: called before each length (progress).  Returns ``{kind: [{"updates": N, "learning_rate", "alpha_y", "validation_score",
  "scores": {task: [normalised score per candidate]}, "learning_rates": [candidates]},
  ...]}`` in the order of ``lifetimes``.
  """
  names = tuple(config.validate_envs)
  kinds = tuple(kind_of(n) for n in names)
  points = {k: candidates(config, k) for k in set(kinds)}
  lrs, ays = hypers_for(config, kinds, points.get)
  out: dict = {k: [] for k in dict.fromkeys(kinds)}
  for n in lifetimes:
    if on_lifetime is not None:
      on_lifetime(int(n))
    c = dataclasses.replace(config, validate_updates=int(n))
    scores = make_scores(SimpleNamespace(config=c, rule=rule), names, c.seed)
    raw = np.asarray(jax.device_get(scores(rule_params, lrs, ays)), np.float64)
    tasks = {m: {"grid_returns": [float(r) for r in raw[v, :len(points[kinds[v]])]]}
             for v, m in enumerate(names)}
    chosen = chosen_settings(c, tasks, dict(zip(names, kinds)), references, points.get)
    for kind, entry in chosen.items():
      norm = {m: [float(normalised(r, references[m])) if np.isfinite(r) else None
                  for r in tasks[m]["grid_returns"]] for m in entry["validation_tasks"]}
      out[kind].append({"updates": int(n), "learning_rate": entry["learning_rate"],
                        "alpha_y": entry["alpha_y"],
                        "validation_score": entry["validation_score"],
                        "learning_rates": [p[0] for p in points[kind]], "scores": norm})
  return out


def settings_at(metrics_path: str, step: int, config, references: dict) -> dict | None:
  """``chosen_settings`` of the validation logged at meta-update ``step`` in a run's
  ``metrics.jsonl`` (how a resumed job, or ``lpg-ship``, recovers the best rule's), or None."""
  from meta_train.plots import read_metrics
  if step < 0 or not os.path.isfile(metrics_path):
    return None
  lines = [l for l in read_metrics(metrics_path)
           if l.get("meta_update") == step and l.get("validation")]
  if not lines:
    return None
  tasks = {n: t for n, t in lines[-1]["validation"].items() if "grid_returns" in t}
  if not tasks or any(n not in references for n in tasks):
    return None
  return chosen_settings(config, tasks, {n: kind_of(n) for n in tasks}, references)


def with_chosen(settled_settings: dict, chosen: dict | None, step: int) -> dict:
  """The artifact's ``meta_test`` entry: ``settled_settings`` with each kind's learning
  rate and alpha_y replaced by the validation's choice (marked ``chosen_by``)."""
  out = {k: dict(v) for k, v in settled_settings.items()}
  for kind, c in (chosen or {}).items():
    entry = out.setdefault(kind, {})
    entry.pop("probability", None)   # the bandit's, not this choice's
    entry.update(c, chosen_by=f"validation at meta-update {step}")
  return out


def make_validator(setup, out: str | None) -> Validator:
  c = setup.config
  names = tuple(c.validate_envs)
  return Validator(names, tuple(kind_of(n) for n in names), baselines(names, out),
                   make_scores(setup, names, c.seed))


def validate(validator: Validator, config, rule_params) -> dict:
  """One validation: ``{"validation": {task: {...}}, "validation_score": mean}``.

  Per task: ``return`` and ``score`` of its best grid point, that point's
  ``learning_rate`` and ``alpha_y``, and ``grid_returns`` (one per grid point);
  ``settings``: ``chosen_settings`` (per agent kind).
  """
  lrs, ays = hypers_for(config, validator.kinds)
  raw = np.asarray(jax.device_get(validator.scores(rule_params, lrs, ays)), np.float64)
  tasks = {}
  for v, name in enumerate(validator.names):
    g = int(np.nanargmax(raw[v])) if np.isfinite(raw[v]).any() else 0
    points = len(grid(config, validator.kinds[v]))
    tasks[name] = {"return": float(raw[v, g]),
                   "score": float(normalised(raw[v, g], validator.references[name])),
                   "learning_rate": float(lrs[v, g]), "alpha_y": float(ays[v, g]),
                   "grid_returns": [float(r) for r in raw[v, :points]]}
  mean = float(np.mean([t["score"] for t in tasks.values()]))
  settings = chosen_settings(config, tasks, dict(zip(validator.names, validator.kinds)),
                             validator.references)
  return {"validation": tasks, "validation_score": mean if np.isfinite(mean) else None,
          "settings": settings}
