"""Rewards: a Protocol, math correctness (math-verify), format, weighted sums, plain functions."""

from lit_rl.rewards.base import (
    Batch,
    FunctionReward,
    Reward,
    RewardFn,
    RewardOutput,
    check_reward_output,
    reward_name,
)
from lit_rl.rewards.combine import WeightedSum
from lit_rl.rewards.format import FormatReward
from lit_rl.rewards.math import MathCorrectness, extract_answer

__all__ = [
    "Batch",
    "FormatReward",
    "FunctionReward",
    "MathCorrectness",
    "Reward",
    "RewardFn",
    "RewardOutput",
    "WeightedSum",
    "check_reward_output",
    "extract_answer",
    "reward_name",
]
