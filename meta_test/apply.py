"""``lpg-apply``: train fresh agents on one environment with a frozen rule or a baseline.

::

  lpg-apply --rule artifact.pkl --env Breakout [--algo lpg|a2c|random|mgrl|ppo] [--steps N]
            [--seeds S] [--out DIR] [--agent tabular|mlp|conv] [--overwrite] [--debug]

Writes ``DIR/summary.json``, ``DIR/curves.csv`` (step, seed, episode_return, episodes,
policy entropy) and ``DIR/curve.png``; ``--compare a2c,ppo`` runs each listed algorithm into
``DIR/<algo>/`` and draws them all on the same axes in ``DIR/compare.png``.  ``--env`` is a registered name
(``envs.list_envs()``, compiled end to end), ``atari/<Game>`` (ale-py, host
loop) or ``package.module:factory`` returning a ``dm_env.Environment`` with
discrete actions (host loop: much slower).  Defaults depend on the observation
kind (``meta_test.plan.DEFAULTS``); the algorithms are ``meta_test.algos.ALGOS``.
``--algo mgrl`` (meta-gradient RL; registered envs only) adds ``meta_params`` (final
gamma and lambda per seed) to the summary and ``gamma``, ``lambda`` columns to the
curves.  User errors exit with status 2 and one line on stderr (``--debug`` adds the
traceback, e.g. of a failing ``--env`` factory).

The work is split by job: ``meta_test.plan`` (resolution, defaults, validation),
``meta_test.run`` (training), ``meta_test.results`` (frames, plots, summary); this
module is the command line only.
"""
from __future__ import annotations

import json
import os
import sys

from lpg import cli
from meta_test.algos import ALGOS
from meta_test.plan import env_slug, make_plan
from meta_test.results import plot_runs
from meta_test.run import execute

PROG = "lpg-apply"


def build_parser() -> cli.Parser:
  p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--rule", help="rule artifact (.pkl); needed for --algo lpg")
  p.add_argument("--env", required=True,
                 help="registered name (see envs.list_envs()), atari/<Game>, or "
                      "package.module:factory returning a dm_env.Environment")
  p.add_argument("--algo", default="lpg", help=f"one of {', '.join(ALGOS)} (default lpg)")
  p.add_argument("--compare", default=None, metavar="ALGO,ALGO,...",
                 help="run each of these algorithms (instead of --algo) into OUT/<algo>/ and "
                      "draw them on the same axes in OUT/compare.png")
  p.add_argument("--steps", type=cli.positive_int, default=1_000_000,
                 help="env steps per seed (default 1e6)")
  p.add_argument("--seeds", type=cli.positive_int, default=3, help="independent agents (default 3)")
  p.add_argument("--out", default=None, help="output directory (default runs/<env>-<algo>)")
  p.add_argument("--agent", default=None, help="tabular, mlp or conv (default: by observation)")
  p.add_argument("--hidden", type=cli.widths, default=None, metavar="W,W,...",
                 help="MLP agent widths, e.g. 64,64 (default: by observation, for every algo)")
  p.add_argument("--lr", type=cli.positive_float, default=None,
                 help="override the default learning rate")
  p.add_argument("--num-envs", type=cli.positive_int, default=None,
                 help="parallel envs per seed (64)")
  p.add_argument("--rollout-len", type=cli.positive_int, default=None,
                 help="steps per update (20)")
  p.add_argument("--entropy-bonus", type=cli.nonnegative_float, default=0.0, metavar="C",
                 help="learned rules only: the agents also ascend C x their policy entropy "
                      "(a hand-set regulariser beside the rule; default 0, the rule alone)")
  p.add_argument("--seed", type=cli.integer, default=0, help="base random seed")
  p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--debug", action="store_true", help="print tracebacks of user errors")
  return p


def _compare_algos(text: str | None) -> list[str] | None:
  if text is None:
    return None
  algos = list(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
  if not algos:
    raise cli.UserError("--compare is empty; give a comma list, e.g. a2c,ppo")
  return algos


def _main(argv) -> int:
  args = build_parser().parse_args(argv)
  algos = _compare_algos(args.compare)
  name = "-".join(algos) if algos else args.algo
  out = args.out or os.path.join("runs", f"{env_slug(args.env)}-{name}")
  # With --compare the bonus goes to the learned rules only; a single --algo gets it (and
  # make_plan's error where the algorithm is not a learned rule).
  bonus = lambda algo: (args.entropy_bonus if not algos
                        or getattr(ALGOS.get(algo), "needs_rule", False) else 0.0)
  plans = [make_plan(args.env, algo, args.steps, args.seeds,
                     os.path.join(out, algo) if algos else out, rule_path=args.rule,
                     agent=args.agent, num_envs=args.num_envs, rollout_len=args.rollout_len,
                     learning_rate=args.lr, seed=args.seed, hidden=args.hidden,
                     entropy_bonus=bonus(algo))
           for algo in (algos or [args.algo])]
  if os.path.isdir(out) and not cli.is_empty_dir(out) and not args.overwrite:
    raise cli.UserError(f"--out {out} is not empty; pass --overwrite to replace its results "
                        "or choose another directory")
  cli.prepare_out_dir(out)        # created and proved writable before any training
  for plan in plans:
    summary = execute(plan, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("env", "algo", "steps", "seeds", "final_return_mean",
                                              "final_return_std", "steps_per_s")}))
    print(f"wrote {plan.out}/summary.json, curves.csv, curve.png", file=sys.stderr)
  if algos:
    plot_runs([(p.choice.algo, p.out) for p in plans], os.path.join(out, "compare.png"),
              f"{args.env}: {', '.join(algos)} ({args.seeds} seeds, mean and min..max)")
    print(f"wrote {out}/compare.png", file=sys.stderr)
  return cli.EXIT_OK


def main(argv=None) -> int:
  """Entry point of ``lpg-apply``; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.run_cli(PROG, lambda: _main(argv), debug="--debug" in argv)


if __name__ == "__main__":
  sys.exit(main())
