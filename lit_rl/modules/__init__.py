"""LightningModules: the shared policy module and one module per algorithm."""

from lit_rl.modules.base import PolicyModule
from lit_rl.modules.grpo import GRPOModule

__all__ = ["GRPOModule", "PolicyModule"]
