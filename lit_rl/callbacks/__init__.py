"""Callbacks: rollouts, reference syncing, sample panels, policy checkpoints."""

from lit_rl.callbacks.checkpoint import PolicyCheckpoint
from lit_rl.callbacks.reference_sync import ReferenceSyncCallback
from lit_rl.callbacks.rollout import RolloutCallback
from lit_rl.callbacks.samples import SampleLoggerCallback

__all__ = ["PolicyCheckpoint", "ReferenceSyncCallback", "RolloutCallback", "SampleLoggerCallback"]
