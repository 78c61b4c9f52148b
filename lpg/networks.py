"""Agent networks (haiku): a policy head plus the heads the update rule asks for.

Three torsos, chosen by ``AgentConfig.kind``:

* ``tabular``: linear, no bias, on the one-hot state, stored as a table indexed
  by the integer state (``ObsSpec.kind == "index"``), zero-initialised so a new
  agent starts uniform.  A row lookup is exactly ``one_hot(s) @ W`` without
  building the one-hot vector.
* ``mlp``: flatten (images and vectors; index observations are one-hot
  encoded) then an MLP.  On CPU this is the right choice for small images.
* ``conv``: a small conv net for image observations, then an MLP.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from envs.base import ObsSpec
from lpg.types import AgentOutputs

AGENT_KINDS = ("tabular", "mlp", "conv")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """Agent network.

  Attributes:
    kind: ``tabular``, ``mlp`` or ``conv``.
    hidden: MLP widths [chosen: 64 for toy worlds; 256,256 for MinAtar in
      meta-test defaults].
    conv_channels: conv layers' channels (3x3, stride 1) for ``conv``.
    separate_value: ``mlp`` / ``conv`` agents give the extra heads (e.g. A2C's value
      ``v``) a torso MLP of their own (same widths, ``head_torso``) on the same input
      features (after the convs, which stay shared), as sb3 / purejaxrl actor-critics
      do, so value fitting cannot drive the policy's features [chosen: False, the
      shared torso of LPG; True for the A2C vector defaults].  Tabular agents ignore it.
  """
  kind: str = "tabular"
  hidden: tuple[int, ...] = (64,)
  conv_channels: tuple[int, ...] = (16,)
  separate_value: bool = False

  def __post_init__(self):
    if self.kind not in AGENT_KINDS:
      raise ValueError(f"agent kind must be one of {AGENT_KINDS}, got {self.kind!r}")


class AgentNetwork(NamedTuple):
  """Pure functions of an agent network.

  ``init(key) -> params``; ``apply(params, obs[..., *obs_shape]) -> AgentOutputs``
  with any number of leading dims.
  """
  init: Callable
  apply: Callable


def make_agent_network(config: AgentConfig, obs_spec: ObsSpec, num_actions: int,
                       head_sizes: dict[str, int], cond_size: int = 0) -> AgentNetwork:
  """Builds an agent with a policy head and ``head_sizes`` extra heads.

  ``head_sizes`` maps head name to width; width 0 means a scalar head (shape
  ``[...]``), e.g. ``{"y": 30}`` for LPG or ``{"v": 0}`` for A2C.

  With ``cond_size > 0`` the agent is conditioned on an extra input ``cond``
  (``[cond_size]``, broadcast over the leading dims; e.g. meta-gradient RL's
  (gamma, lambda)) and ``apply(params, obs, cond)`` takes it: tabular agents
  add ``cond @ W`` (``W`` ``[cond_size, width]``, zero init, one per table) to
  each looked-up row; MLP and conv agents concatenate it to the flattened
  features before the torso MLP.
  """
  if config.kind == "tabular" and obs_spec.kind != "index":
    raise ValueError(f"a tabular agent needs an index observation, got {obs_spec.kind!r}; "
                     "use --agent mlp or conv")
  if config.kind == "conv" and obs_spec.kind != "image":
    raise ValueError(f"a conv agent needs an image observation, got {obs_spec.kind!r}; "
                     "use --agent mlp")
  n_obs_dims = len(obs_spec.shape)
  names = sorted(head_sizes)

  def forward(obs, cond=None):
    lead = obs.shape[:obs.ndim - n_obs_dims]
    if cond is not None and cond.dtype != jnp.float64:
      cond = cond.astype(jnp.float32)
    if config.kind == "tabular":
      n = obs_spec.num_values
      idx = obs.astype(jnp.int32)

      def table(name, width):
        rows = hk.get_parameter(name, [n, width], init=jnp.zeros)[idx]
        if cond is None:
          return rows
        w = hk.get_parameter(name + "_cond", [cond_size, width], init=jnp.zeros)
        return rows + jnp.broadcast_to(cond, lead + (cond_size,)) @ w

      heads = {}
      for name in names:
        width = head_sizes[name]
        out = table(name, max(width, 1))
        heads[name] = out if width else out[..., 0]
      return AgentOutputs(logits=table("pi", num_actions), heads=heads)
    x = obs
    if obs_spec.kind == "index":
      x = jax.nn.one_hot(x, obs_spec.num_values)
    x = x.astype(jnp.float32).reshape((-1,) + tuple(obs_spec.shape))
    if config.kind == "conv":
      for ch in config.conv_channels:
        x = jax.nn.relu(hk.Conv2D(ch, 3, stride=1, padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    if cond is not None:
      x = jnp.concatenate([x, jnp.broadcast_to(cond.astype(x.dtype), (x.shape[0], cond_size))], -1)
    features = x
    x = hk.nets.MLP(config.hidden, activate_final=True, name="torso")(features)
    logits = hk.Linear(num_actions, w_init=jnp.zeros, name="pi")(x)
    if config.separate_value and names:
      x = hk.nets.MLP(config.hidden, activate_final=True, name="head_torso")(features)
    heads = {}
    for name in names:
      width = head_sizes[name]
      out = hk.Linear(max(width, 1), w_init=jnp.zeros, name=name)(x)
      heads[name] = out if width else out[..., 0]
    reshape = lambda a: a.reshape(lead + a.shape[1:])
    return AgentOutputs(logits=reshape(logits), heads={k: reshape(v) for k, v in heads.items()})

  net = hk.without_apply_rng(hk.transform(forward))
  dummy = jnp.zeros(obs_spec.shape, obs_spec.dtype)
  if cond_size:
    return AgentNetwork(init=lambda key: net.init(key, dummy, jnp.zeros((cond_size,), jnp.float32)),
                        apply=net.apply)
  return AgentNetwork(init=lambda key: net.init(key, dummy), apply=net.apply)
