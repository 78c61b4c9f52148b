"""LPG core: the update rule, agent networks, inner update, meta-objective, artifacts."""
from envs import xla_guard

xla_guard.apply()  # first, before jax starts (see envs.xla_guard)

from lpg.artifact import ArtifactError, LoadedRule, load_rule, save_rule
from lpg.meta_objective import Lifetime, MetaConfig, MetaProblem, population_meta_grad
from lpg.networks import AgentConfig, make_agent_network
from lpg.rule import InnerHypers, LPGConfig, LPGRule, UpdateRule, make_hypers
from lpg.update import OptimizerConfig, inner_update, make_optimizer

__all__ = [
    "AgentConfig", "ArtifactError", "InnerHypers", "LPGConfig", "LPGRule", "Lifetime",
    "LoadedRule", "MetaConfig", "MetaProblem", "OptimizerConfig", "UpdateRule", "inner_update",
    "load_rule", "make_agent_network", "make_hypers", "make_optimizer", "population_meta_grad",
    "save_rule",
]
