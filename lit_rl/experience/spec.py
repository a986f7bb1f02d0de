"""What an algorithm asks of the experience pipeline: ``ExperienceSpec`` and its settings."""

from dataclasses import dataclass, field

from lit_rl.algorithms import KLEstimator
from lit_rl.experience.estimators import AdvantageEstimator


@dataclass(frozen=True)
class Overlong:
    """What happens to completions that run (nearly) to the length budget: DAPO's soft
    overlong punishment (Yu et al., 2025, Eq. 13) and its overlong filtering.

    Args:
        buffer_length: L_cache: a completion longer than ``max_completion_length -
            buffer_length`` tokens loses reward linearly, down to ``-penalty_factor`` at the
            budget; 0 = no punishment.
        penalty_factor: the penalty at the budget.
        mask_truncated_completions: leave completions that hit the budget without an EOS out of
            the loss (overlong filtering; TRL's name).
    """

    buffer_length: int = 0
    penalty_factor: float = 1.0
    mask_truncated_completions: bool = False

    def __post_init__(self) -> None:
        if self.buffer_length < 0 or self.penalty_factor < 0:
            raise ValueError(
                "Overlong: buffer_length and penalty_factor must be >= 0, got "
                f"{self.buffer_length}, {self.penalty_factor}"
            )


@dataclass(frozen=True)
class ExperienceSpec:
    """What an algorithm asks of the pipeline for the next rollout batch.

    ``kl_coef > 0`` folds ``kl_coef * KL(pi_old || pi_ref)`` (``kl_estimator`` per token) into
    the per-token reward before the estimator runs (PPO, REINFORCE++; 0 keeps the KL out of the
    reward). How completions are sampled is the sampler's (``lit_rl.rollout.CompletionSampler``).
    """

    num_generations: int  # G
    estimator: AdvantageEstimator
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k1"
    overlong: Overlong = field(default_factory=Overlong)
