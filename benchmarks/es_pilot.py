"""CPU pilot of issue 15: OpenES over whole lifetimes trains a lifetime-aware LPG rule.

Trains on ``--train`` worlds with randomised lifetime lengths (N log-uniform in
``--planned``), then compares the ES rule with its initial (random) rule on
``--heldout`` worlds (tasks, agents and seeds never used in training; N given by
``--heldout-planned``), and records how the trained rule's behaviour depends
on n/N: policy entropy and pi_hat scale along the lifetime, and pi_hat scale on
fixed rollouts as n/N alone is varied.

    python benchmarks/es_pilot.py --generations 200 --out /tmp/es_pilot
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs import returns  # noqa: E402
from lpg.lifetime import (LifetimeConfig, World, fitness, make_lifetime, mean_fitness,  # noqa: E402
                          sample_planned)
from lpg.networks import AgentConfig  # noqa: E402
from lpg.rule import LPGConfig, LPGRule, lpg_inputs, make_hypers, make_progress  # noqa: E402
from lpg.update import OptimizerConfig  # noqa: E402
from meta_train import es  # noqa: E402

HYPERS = make_hypers(40.0, alpha_y=0.5, gamma=0.99)   # tabular SGD lr 40 (lpg-apply's default)


def reference(name):
  ref = returns.reference_returns(name)
  return None if ref.get("optimal") is None else (float(ref["optimal"]), float(ref["random"]))


def make_world(name, rule, max_updates, args, diagnostics=False):
  cfg = LifetimeConfig(max_updates, args.rollout_len, args.num_envs)
  life = make_lifetime(envs.make(name), rule, AgentConfig("tabular"), OptimizerConfig("sgd"),
                       cfg, diagnostics=diagnostics)
  return World(life, HYPERS, reference(name))


def heldout_scores(rule, params, args, key):
  """``{world: [seeds] normalised whole-lifetime return}`` of ``params`` on unseen draws."""
  out = {}
  for i, name in enumerate(args.heldout):
    world = make_world(name, rule, args.heldout_planned, args)
    keys = jax.random.split(jax.random.fold_in(key, i), args.eval_seeds)
    trace = jax.jit(jax.vmap(world.lifetime, (None, None, 0)))(params, world.hypers, keys)
    out[name] = np.asarray(fitness(trace, 1.0, world.reference)).tolist()
  return out


def behaviour(rule, params, args, key):
  """Entropy and pi_hat scale against n/N on ``args.behaviour_env``; and n/N alone varied."""
  name, n_upd = args.behaviour_env, args.heldout_planned
  world = make_world(name, rule, n_upd, args, diagnostics=True)
  keys = jax.random.split(key, args.eval_seeds)
  trace = jax.jit(jax.vmap(world.lifetime, (None, None, 0)))(params, world.hypers, keys)
  # Same tasks, agents and update count, but the rule is told N/2: at update n
  # it sees 2n/N.  Entropy over the last quarter of the short lifetime, both ways.
  short = jax.jit(jax.vmap(world.lifetime, (None, None, 0, None)))(params, world.hypers, keys,
                                                                   n_upd // 2)
  span = slice(3 * n_upd // 8, n_upd // 2)
  same_n = {"updates": [span.start, span.stop],
            "entropy_told_N": float(np.mean(np.asarray(trace.entropy)[:, span])),
            "entropy_told_N_over_2": float(np.mean(np.asarray(short.entropy)[:, span]))}
  quarters = np.array_split(np.arange(n_upd), 4)
  along = {f"q{i + 1}": {"entropy": float(np.mean(np.asarray(trace.entropy)[:, q])),
                         "pi_hat_rms": float(np.mean(np.asarray(trace.pi_hat_rms)[:, q]))}
           for i, q in enumerate(quarters)}
  # Fixed rollouts of a fresh agent; only the rule's n/N input changes.
  from lpg.networks import make_agent_network
  from lpg.rollout import reset_envs, unroll
  env = envs.make(name)
  net = make_agent_network(AgentConfig("tabular"), env.obs_spec, env.num_actions, rule.head_sizes())
  ap = net.init(key)
  ep = env.sample_params(key)
  ro, _, _ = unroll(env, ep, lambda o: net.apply(ap, o).logits,
                    reset_envs(env, ep, key, args.num_envs), key, args.rollout_len)
  out = net.apply(ap, ro.obs)
  fixed = {}
  for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
    prog = make_progress(frac * n_upd, n_upd)
    pi_hat = rule.apply(params, lpg_inputs(ro, out, HYPERS.gamma, prog)).pi_hat
    fixed[str(frac)] = float(jnp.sqrt(jnp.mean(jnp.square(pi_hat))))
  return {"env": name, "planned": n_upd, "by_quarter": along, "pi_hat_rms_vs_n_over_N": fixed,
          "same_updates_other_N": same_n}


def summary(scores):
  return {k: {"mean": float(np.mean(v)), "se": float(np.std(v) / np.sqrt(len(v)))}
          for k, v in scores.items()}


def train(args):
  rule = LPGRule(LPGConfig(hidden=args.hidden, y_dim=args.y_dim, phi_hidden=8,
                           lifetime_inputs=True))
  params0 = rule.init(jax.random.PRNGKey(args.seed))
  cfg = es.ESConfig(population=args.population, sigma=args.sigma, learning_rate=args.lr)
  state, unravel = es.init(params0, cfg, jax.random.PRNGKey(args.seed + 1))
  worlds = [make_world(n, rule, args.planned[1], args) for n in args.train]
  fit = lambda p, k, n: mean_fitness(worlds, p, k, n, seeds=args.seeds, window=args.window)
  gen = es.make_generation(fit, unravel, cfg,
                           context_fn=lambda k: sample_planned(k, *args.planned))
  run = jax.jit(es.run, static_argnums=(0, 2))
  log, t0, done = [], time.time(), 0
  while done < args.generations:
    n = min(args.log_every, args.generations - done)
    state, m = run(gen, state, n)
    done += n
    log.append({"generation": done, "fitness_mean": float(m.fitness_mean.mean()),
                "fitness_max": float(m.fitness_max.max()), "s": round(time.time() - t0, 1)})
    print(json.dumps(log[-1]), flush=True)
  return rule, params0, unravel(state.mean), log


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--train", nargs="+", default=["chain/short", "tabular/dense"])
  p.add_argument("--heldout", nargs="+", default=["chain/long", "tabular/sparse"])
  p.add_argument("--behaviour-env", default="tabular/dense")
  p.add_argument("--planned", type=int, nargs=2, default=[16, 64])
  p.add_argument("--heldout-planned", type=int, default=64)
  p.add_argument("--generations", type=int, default=200)
  p.add_argument("--population", type=int, default=32)
  p.add_argument("--sigma", type=float, default=0.1)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--window", type=float, default=1.0)
  p.add_argument("--eval-seeds", type=int, default=32)
  p.add_argument("--hidden", type=int, default=16)
  p.add_argument("--y-dim", type=int, default=8)
  p.add_argument("--rollout-len", type=int, default=20)
  p.add_argument("--num-envs", type=int, default=16)
  p.add_argument("--log-every", type=int, default=25)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  rule, params0, params, log = train(args)
  key = jax.random.PRNGKey(10_000 + args.seed)     # never a training key
  result = {"args": vars(args), "log": log,
            "heldout_initial": heldout_scores(rule, params0, args, key),
            "heldout_es": heldout_scores(rule, params, args, key),
            "behaviour_es": behaviour(rule, params, args, key),
            "behaviour_initial": behaviour(rule, params0, args, key)}
  result["summary"] = {"initial": summary(result["heldout_initial"]),
                       "es": summary(result["heldout_es"])}
  print(json.dumps({k: result[k] for k in ("summary", "behaviour_es", "behaviour_initial")},
                   indent=1))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pilot.json"), "w") as f:
      json.dump(result, f, indent=1)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
    np.savez(os.path.join(args.out, "rule_params.npz"), es=flat(params), initial=flat(params0))


if __name__ == "__main__":
  main()
