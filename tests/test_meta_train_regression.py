"""The same seeds give the same rules as before the meta-training refactor (issue 12).

Reference checksums (sha256 of the rule's parameters and the bandit's state, leaves
in tree order) were recorded on this project's CPU machine (jax 0.10.2, x86-64)
with the code before the refactor (main at c5bf002), calling ``run(state, 1)``
as ``lpg-meta-train`` does.  XLA's CPU code may round differently on another CPU
or jax version, so the check runs only on the recorded platform.
"""
import dataclasses
import hashlib

import jax
import numpy as np
import pytest

from meta_train.config import PRESETS
from meta_train.trainer import make_meta_train

REFERENCE = {
    # name: (config, meta-updates, rule checksum, bandit checksum, meta-losses)
    "tiny": (PRESETS["tiny"], 4, "7e535378576db1e1", "48d760e77068c614",
             [-0.030535021796822548, -0.02401030622422695, 0.029364854097366333,
              -0.04908014461398125]),
    # Three worlds (chain, tabular SGD, random-grid MLP with Adam), chunked gradients,
    # lifetimes of 4 updates so turnover and the bandit's credit both happen.
    "mixed": (dataclasses.replace(PRESETS["tiny"], envs=("chain/short", "tabular/dense",
                                                         "random/small"),
                                  agents_per_env=4, agent_chunk=2, lifetime_updates=4), 3,
              "df52ba7307a37360", "2390f5d1d9798fab",
              [-0.05913819372653961, -0.06966984272003174, -0.08262327313423157]),
}

RECORDED_PLATFORM = jax.__version__ == "0.10.2" and jax.default_backend() == "cpu"


def digest(tree) -> str:
  h = hashlib.sha256()
  for x in jax.tree_util.tree_leaves(jax.device_get(tree)):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


@pytest.mark.parametrize("name", list(REFERENCE))
def test_same_seed_same_rule_as_before_the_refactor(name):
  config, updates, rule_sum, bandit_sum, losses = REFERENCE[name]
  mt = make_meta_train(config)
  state = mt.init(config.seed)
  got = []
  for _ in range(updates):
    state, metrics = mt.run(state, 1)
    got.append(float(metrics.meta_loss[0]))
  np.testing.assert_allclose(got, losses, rtol=1e-5, atol=1e-7)
  if not RECORDED_PLATFORM:
    pytest.skip("bit-exact checksums were recorded on CPU with jax 0.10.2")
  assert (digest(state.rule_params), digest(state.bandit)) == (rule_sum, bandit_sum)
