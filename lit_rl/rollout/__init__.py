"""Rollout generation behind a small engine interface."""

from lit_rl.rollout.engine import (
    HFGenerateEngine,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
)

__all__ = ["HFGenerateEngine", "RolloutEngine", "SamplingParams", "completion_mask_from_eos"]
