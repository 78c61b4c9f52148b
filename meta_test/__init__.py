"""Meta-testing: train fresh agents with a frozen rule (or a baseline) and report.

* ``meta_test.baselines``: hand-designed rules (A2C, a random policy) behind
  the same ``UpdateRule`` interface as LPG.
* ``meta_test.train``: ``make_train(...) -> train(key)``, one compiled run
  (``lax.scan`` over updates), ``vmap``-ed over seeds; chunked for progress.
* ``meta_test.host``: the same training for environments stepped on the host
  (a user's ``dm_env.Environment``, Atari through ale-py).
* ``meta_test.apply`` / ``meta_test.report``: the ``lpg-apply`` and
  ``lpg-report`` command lines.
* ``meta_test.analysis``: what a rule's outputs encode (used by the notebooks).
"""
from envs import xla_guard

xla_guard.apply()  # first, before jax starts (see envs.xla_guard)
