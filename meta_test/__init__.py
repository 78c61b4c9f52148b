"""Meta-testing: train fresh agents with a frozen rule (or a baseline) and report.

* ``meta_test.train``: ``make_train(env, RunConfig, rule, rule_params[, meta_hook])``,
  one compiled run (``lax.scan`` over updates), ``vmap``-ed over seeds; chunked for progress.
* ``meta_test.baselines``: hand-designed rules (A2C, a random policy) behind the same
  ``UpdateRule`` interface as LPG; ``meta_test.mgrl``: meta-gradient RL (a ``MetaHook``).
* ``meta_test.algos``: the one table of algorithms (name -> ``Algo``) the CLIs train.
* ``meta_test.host``: the same training for environments stepped on the host (a user's
  ``dm_env.Environment``, Atari through ale-py).
* ``meta_test.plan`` (env resolution, defaults, validation), ``meta_test.run`` (training a
  plan), ``meta_test.results`` (final returns, curves, plots, ``summary.json``).
* ``meta_test.apply`` / ``meta_test.report``: the ``lpg-apply`` and ``lpg-report`` command
  lines.
* ``meta_test.analysis``: what a rule's outputs encode (used by the notebooks).
"""
from envs import xla_guard

xla_guard.apply()  # first, before jax starts (see envs.xla_guard)
