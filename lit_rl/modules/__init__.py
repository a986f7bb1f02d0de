"""LightningModules: the shared policy module and one module per algorithm."""

from lit_rl.modules.base import PolicyModule
from lit_rl.modules.grpo import GRPOModule
from lit_rl.modules.ppo import PPOModule

__all__ = ["GRPOModule", "PPOModule", "PolicyModule"]
