"""What a rule's outputs encode (used by ``notebooks/rule_analysis.ipynb``).

``probe_rule`` trains an agent with the rule on a tabular environment, rolls
the trained agent out once more and lines up, per step: the agent's prediction
``y(s)``, the rule's targets ``y_hat`` and ``pi_hat``, the discounted
Monte-Carlo return ``G``, an A2C-style advantage ``G - V_mc(s)`` (``V_mc``: the
mean Monte-Carlo return of the state over the probe) and, for tabular grid
worlds, the true value of the state from the exact solver
(``envs.returns.tabular_values``: optimal, undiscounted, over a
``value_horizon``-step horizon).  ``correlations`` summarises them: a vector
(``y``, ``y_hat``) is scored by the Pearson r between the scalar and its
least-squares linear read-out.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import envs
from lpg.networks import AgentConfig
from lpg.returns import batched_lambda_returns
from lpg.rollout import unroll
from lpg.update import OptimizerConfig
from meta_test.train import RunConfig, make_train, run_seeds


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Sizes of a probe.

  Attributes:
    steps: environment steps of training before the probe.
    num_envs, rollout_len: training batch (``B``, ``T``).
    probe_len: steps per environment of the probe rollout (long enough for
      whole episodes: only steps whose episode ends inside it get a return).
    learning_rate: tabular SGD step [ported: 40].
    gamma: discount of the Monte-Carlo returns and of the rule's input.
    value_horizon: horizon of the solver's values (``None``: the episode limit).
    seed: PRNG seed.
  """
  steps: int = 100_000
  num_envs: int = 16
  rollout_len: int = 20
  probe_len: int = 600
  learning_rate: float = 40.0
  gamma: float = 0.99
  value_horizon: int | None = 100
  seed: int = 0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def readout_r(features: np.ndarray, target: np.ndarray) -> float:
  """Pearson r between ``target [N]`` and its least-squares fit from ``features [N, m]``."""
  x = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)
  w, *_ = np.linalg.lstsq(x, target, rcond=None)
  return _pearson(x @ w, target)


def probe_rule(env_name: str, rule, rule_params, config: ProbeConfig = ProbeConfig()):
  """Trains with ``rule`` on ``env_name`` then probes it; returns a pandas DataFrame.

  One row per probed step with a finished episode after it: ``state``,
  ``reward``, ``G`` (discounted MC return), ``advantage`` (``G - V_mc(state)``),
  ``pi_hat``, ``v_true`` (NaN unless a tabular grid), ``y_0..y_{m-1}`` and
  ``y_hat_0..``.
  """
  import pandas as pd
  env = envs.make(env_name)
  if env.obs_spec.kind != "index":
    raise ValueError(f"probe_rule needs a tabular (index-observation) env, got {env_name!r}")
  b, t = config.num_envs, config.rollout_len
  run = RunConfig(AgentConfig("tabular"), OptimizerConfig("sgd"), config.learning_rate,
                  gamma=config.gamma, num_envs=b, rollout_len=t,
                  num_updates=max(1, config.steps // (b * t)))
  hypers = run.hypers
  fns = make_train(env, run, rule, rule_params)
  key, k_probe = jax.random.split(jax.random.PRNGKey(config.seed))
  res = run_seeds(fns, key[None])
  state = jax.tree_util.tree_map(lambda x: x[0], res.state)
  params = state.agent_params

  @jax.jit
  def probe(key):
    rollout, _, _ = unroll(env, state.env_params, lambda o: fns.net.apply(params, o).logits,
                           state.env, key, config.probe_len)
    out = fns.net.apply(params, rollout.obs)
    targets = rule.targets(rule_params, rollout, out, hypers)
    discount = config.gamma * rollout.bootstrap_mask
    g = batched_lambda_returns(rollout.rewards, discount, jnp.zeros(rollout.obs.shape[:2]), 1.0)
    return rollout, out, targets, g

  rollout, out, targets, g = jax.tree_util.tree_map(np.asarray, probe(k_probe))
  done = np.asarray(rollout.done) > 0.5                                  # [T, B]
  # A step has a complete return iff an episode end follows it within the probe.
  complete = np.flip(np.cumsum(np.flip(done, 0), 0), 0) > 0
  obs = rollout.obs[:-1]
  cols = {"state": obs[complete], "reward": rollout.rewards[complete], "G": g[complete],
          "pi_hat": targets.pi_hat[complete]}
  v_true = np.full(obs.shape, np.nan)
  try:
    from envs import returns as env_returns
    from envs.tabular import TabularGrid
    if isinstance(env, TabularGrid):
      values = env_returns.tabular_values(env, state.env_params, config.value_horizon)
      v_true = values.reshape(-1)[obs]
  except ImportError:
    pass
  cols["v_true"] = v_true[complete]
  df = pd.DataFrame(cols)
  df["advantage"] = df["G"] - df.groupby("state")["G"].transform("mean")
  if "y" in out.heads:
    y = jax.nn.softmax(out.heads["y"][:-1])
    y = np.asarray(y)[complete]
    for i in range(y.shape[1]):
      df[f"y_{i}"] = y[:, i]
  if targets.y_hat is not None:
    yh = targets.y_hat[complete]
    for i in range(yh.shape[1]):
      df[f"y_hat_{i}"] = yh[:, i]
  return df


def correlations(df) -> dict[str, float]:
  """Summary numbers of a ``probe_rule`` frame (NaN where not computable).

  ``y_vs_return``, ``y_hat_vs_return``: read-out r of ``y`` / ``y_hat`` against
  ``G``; ``y_vs_true_value``: against ``v_true``; ``pi_hat_vs_advantage``:
  Pearson r of ``pi_hat`` and the A2C-style advantage; ``pi_hat_vs_return``.
  """
  ycols = [c for c in df.columns if c.startswith("y_") and not c.startswith("y_hat_")]
  yhcols = [c for c in df.columns if c.startswith("y_hat_")]
  out = {"n_steps": float(len(df))}
  g = df["G"].to_numpy()
  out["y_vs_return"] = readout_r(df[ycols].to_numpy(), g) if ycols else float("nan")
  out["y_hat_vs_return"] = readout_r(df[yhcols].to_numpy(), g) if yhcols else float("nan")
  vt = df["v_true"].to_numpy()
  ok = np.isfinite(vt)
  out["y_vs_true_value"] = (readout_r(df[ycols].to_numpy()[ok], vt[ok])
                            if ycols and ok.sum() > 2 else float("nan"))
  out["pi_hat_vs_advantage"] = _pearson(df["pi_hat"], df["advantage"])
  out["pi_hat_vs_return"] = _pearson(df["pi_hat"], df["G"])
  return out
