"""Held-out evaluation on the run's engine: greedy accuracy, pass@k, maj@k."""

from lit_rl.evaluation.evaluate import (
    EvaluationBatch,
    EvaluationPlan,
    evaluate_batch,
    majority_correct,
)
from lit_rl.evaluation.metrics import EvaluationMetrics, PassAtK, pass_at_k

__all__ = [
    "EvaluationBatch",
    "EvaluationMetrics",
    "EvaluationPlan",
    "PassAtK",
    "evaluate_batch",
    "majority_correct",
    "pass_at_k",
]
