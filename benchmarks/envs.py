"""Random-policy throughput of every environment (steps/s, vmapped, jitted scan).

Usage::

  python benchmarks/envs.py                 # all envs, 1024 and 4096 parallel envs
  python benchmarks/envs.py --quick         # a few envs, small sizes (README demo)
  python benchmarks/envs.py --envs tabular/dense Breakout --sizes 256 1024

Each measurement runs ``--steps`` steps of ``N`` vmapped copies inside one
jitted ``lax.scan`` (actions uniform at random, observations carried so they are
really computed), excluding compile time, timed with ``block_until_ready``; the
best of ``--repeats`` runs is reported.  For gymnax games the same loop is also
run on raw gymnax (``gymnax_env.step``) and the ratio ours / raw is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs  # noqa: E402  (first: applies envs.xla_guard before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

QUICK_ENVS = ("tabular/dense", "random/dense", "chain/short", "Breakout")


def make_runner(reset, step, sample_params, num_actions: int, num_envs: int, steps: int):
  """A jitted ``run(key) -> (return sum, last obs)`` of ``steps`` vmapped random steps."""

  @jax.jit
  def run(key):
    k_p, k_r, k_s = jax.random.split(key, 3)
    params = jax.vmap(sample_params)(jax.random.split(k_p, num_envs))
    obs, state = jax.vmap(reset)(jax.random.split(k_r, num_envs), params)

    def body(carry, key):
      state, total, _ = carry
      k_a, k_e = jax.random.split(key)
      action = jax.random.randint(k_a, (num_envs,), 0, num_actions)
      obs, state, reward = jax.vmap(step)(jax.random.split(k_e, num_envs), state, action, params)
      return (state, total + reward.sum(), obs), None

    (_, total, obs), _ = jax.lax.scan(body, (state, jnp.zeros(()), obs),
                                      jax.random.split(k_s, steps))
    return total, obs

  return run


def time_runners(runners, num_envs: int, steps: int, repeats: int) -> list[float]:
  """Steps/s of each runner; runs are interleaved so that load changes hit all alike."""
  for run in runners:
    jax.block_until_ready(run(jax.random.PRNGKey(0)))  # compile and warm up
  best = [float("inf")] * len(runners)
  for i in range(repeats):
    for j, run in enumerate(runners):
      t0 = time.perf_counter()
      jax.block_until_ready(run(jax.random.PRNGKey(i + 1)))
      best[j] = min(best[j], time.perf_counter() - t0)
  return [num_envs * steps / b for b in best]


def ours(env):
  def step(k, s, a, p):
    out = env.step(k, s, a, p)
    return out.obs, out.state, out.reward
  return env.reset, step, env.sample_params


def raw_gymnax(env):
  genv = env.gymnax_env

  def step(k, s, a, p):
    obs, state, reward, _, _, _ = genv.step(k, s, a, p)
    return obs, state, reward

  return genv.reset, step, env.sample_params


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="few envs, small sizes")
  parser.add_argument("--envs", nargs="+", default=None,
                      help="env names or suite names (tabular, random, chain, minatar, classic, all)")
  parser.add_argument("--sizes", nargs="+", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  sizes = args.sizes or ([256, 1024] if args.quick else [1024, 4096])
  steps = args.steps or (100 if args.quick else 500)
  if args.envs:
    names = []
    for n in args.envs:
      names.extend(envs.SUITES[n] if n in envs.SUITES else [n])
  elif args.quick:
    names = list(QUICK_ENVS)
  else:
    names = list(envs.SUITES["all"] + envs.SUITES["minatar"] + envs.SUITES["classic"])
  repeats = 2 if args.quick else args.repeats

  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"{steps} steps per run, best of {repeats}; steps/s in millions")
  cols = [f"N={n}" for n in sizes]
  header = f"{'env':26s}" + "".join(f"{c:>11s}" for c in cols)
  header += "".join(f"{'raw ' + c:>13s}{'ratio':>7s}" for c in cols)
  print(header)
  print("-" * len(header))
  for name in names:
    env = envs.make(name)
    row = f"{name:26s}"
    ratios = []
    for n in sizes:
      runners = [make_runner(*ours(env), env.num_actions, n, steps)]
      if hasattr(env, "gymnax_env"):
        runners.append(make_runner(*raw_gymnax(env), env.num_actions, n, steps))
      sps = time_runners(runners, n, steps, repeats)
      row += f"{sps[0] / 1e6:11.2f}"
      if len(sps) > 1:
        ratios.append((sps[1], sps[0] / sps[1]))
    for raw, ratio in ratios:
      row += f"{raw / 1e6:13.2f}{ratio:7.2f}"
    print(row, flush=True)


if __name__ == "__main__":
  main()
