"""Callbacks: rollouts, evaluation, reference syncing, sample panels, policy checkpoints, the
progress bar."""

from lit_rl.callbacks.checkpoint import PolicyCheckpoint
from lit_rl.callbacks.evaluation import EvaluationCallback
from lit_rl.callbacks.progress import StepProgressBar
from lit_rl.callbacks.reference_sync import ReferenceSyncCallback
from lit_rl.callbacks.rollout import RolloutCallback
from lit_rl.callbacks.samples import SampleLoggerCallback

__all__ = [
    "EvaluationCallback",
    "PolicyCheckpoint",
    "ReferenceSyncCallback",
    "RolloutCallback",
    "SampleLoggerCallback",
    "StepProgressBar",
]
