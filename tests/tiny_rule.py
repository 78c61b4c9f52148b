"""A tiny rule artifact for meta-testing tests (``from tiny_rule import save_tiny_rule``)."""
import jax

from lpg.artifact import save_rule
from lpg.rule import LPGConfig, LPGRule


def save_tiny_rule(path, seed: int = 0, note: str = "test rule", **metadata) -> str:
  """Saves an untrained ``LPGConfig(hidden=16, y_dim=8)`` rule from ``PRNGKey(seed)``
  (``metadata``: more metadata fields, e.g. ``envs``, ``validate_envs``)."""
  config = LPGConfig(hidden=16, y_dim=8)
  save_rule(str(path), LPGRule(config).init(jax.random.PRNGKey(seed)), config,
            {"note": note, **metadata})
  return str(path)
