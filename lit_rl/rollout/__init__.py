"""Rollout generation behind a small engine interface."""

from lit_rl.rollout.engine import (
    Generation,
    HFGenerateEngine,
    PackedEngine,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    default_engine,
)

__all__ = [
    "Generation",
    "HFGenerateEngine",
    "PackedEngine",
    "RolloutEngine",
    "SamplingParams",
    "completion_mask_from_eos",
    "default_engine",
]
