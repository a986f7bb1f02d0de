"""Rewards: how they are called and checked, math correctness (math-verify), format, weighted sums, plain functions,
a learned reward model, process rewards (rule-based arithmetic steps, a learned process reward model),
and the rewards an environment gave its episodes (summed, or per turn)."""

from lit_rl.rewards.base import (
    Batch,
    FunctionReward,
    ReadsFields,
    RewardFn,
    RewardOutput,
    Step,
    call_reward,
    check_reward_fields,
    check_reward_output,
    reward_fields,
    reward_name,
    steps_output,
)
from lit_rl.rewards.combine import WeightedSum
from lit_rl.rewards.episode import (
    EPISODE_REWARD,
    TURN_ENDS,
    TURN_REWARDS,
    EpisodeReward,
    TurnRewards,
)
from lit_rl.rewards.format import FormatReward
from lit_rl.rewards.math import MathCorrectness, extract_answer
from lit_rl.rewards.process_model import ProcessRewardModel
from lit_rl.rewards.reward_model import RewardModel
from lit_rl.rewards.steps import ArithmeticSteps

__all__ = [
    "EPISODE_REWARD",
    "TURN_ENDS",
    "TURN_REWARDS",
    "ArithmeticSteps",
    "EpisodeReward",
    "Batch",
    "FormatReward",
    "FunctionReward",
    "MathCorrectness",
    "ProcessRewardModel",
    "ReadsFields",
    "RewardFn",
    "RewardModel",
    "RewardOutput",
    "Step",
    "TurnRewards",
    "WeightedSum",
    "call_reward",
    "check_reward_fields",
    "check_reward_output",
    "extract_answer",
    "reward_fields",
    "reward_name",
    "steps_output",
]
