"""One batch of held-out problems through the run's engine: greedy and sampled completions,
scored by the run's reward."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lit_rl.rewards import RewardFn, call_reward
from lit_rl.rewards.math import extract_answer
from lit_rl.rollout import CompletionSampler


@dataclass
class EvaluationPlan:
    """How the held-out split is scored.

    Args:
        num_samples: n completions sampled per problem (at the training temperature and
            top_p) for pass@1, pass@n and maj@n; 0 = greedy accuracy only.
        success_threshold: a completion is correct when the reward's total reaches this.
        answer_extractor: the final answer of a completion, for the majority vote (a
            completion without one does not vote).
    """

    num_samples: int = 4
    success_threshold: float = 1.0
    answer_extractor: Callable[[str], str | None] = extract_answer

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"EvaluationPlan.num_samples must be >= 0, got {self.num_samples}")


@dataclass
class EvaluationBatch:
    """B problems' outcomes."""

    greedy_correct: torch.Tensor  # [B] bool
    greedy_reward: torch.Tensor  # [B] float32
    greedy_length: torch.Tensor  # [B] long, sampled tokens (a completion's through EOS)
    sample_correct: torch.Tensor | None  # [B, n] bool, n = num_samples (None when 0)
    majority_correct: torch.Tensor | None  # [B] bool: the most voted answer is correct


def majority_correct(
    answers: list[list[str | None]],  # B x n final answers (None = no answer)
    correct: torch.Tensor,  # [B, n] bool
) -> torch.Tensor:  # [B] bool
    """Per problem, whether the most frequent answer among its samples is correct (maj@n,
    self-consistency: Wang et al., 2023). Ties go to the answer seen first; a problem whose
    samples give no answer counts as wrong."""
    result = torch.zeros(len(answers), dtype=torch.bool)
    for i, row in enumerate(answers):
        votes = Counter(answer for answer in row if answer is not None)
        if not votes:
            continue
        top = max(votes.values())
        winner = next(answer for answer in row if answer is not None and votes[answer] == top)
        result[i] = bool(correct[i, row.index(winner)])
    return result


@torch.no_grad()
def evaluate_batch(
    sampler: CompletionSampler,
    reward: RewardFn,
    batch: dict[str, Any],
    plan: EvaluationPlan,
    version: int,
    where: str,
) -> EvaluationBatch:
    """Greedy rollouts of ``batch``'s prompts (and ``plan.num_samples`` sampled ones per
    prompt) by ``sampler`` with the weights at ``version``, scored by ``reward``: completions,
    or episodes for an ``EpisodeSampler`` (the answer its last turn)."""
    fields = {key: values for key, values in batch.items() if isinstance(values, list)}

    def completions(num: int, greedy: bool) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        sampled = sampler.rollouts(batch, num, version, greedy)
        repeated = {key: [v for v in values for _ in range(num)] for key, values in fields.items()}
        repeated |= sampled.fields  # an episode's environment reward
        output = call_reward(reward, repeated["prompt"], sampled.texts, repeated, where)
        return sampled.mask, sampled.texts, output.total.float()

    mask, _, greedy_reward = completions(1, greedy=True)
    sample_correct = majority = None
    n = plan.num_samples
    if n > 0:
        _, texts, sample_reward = completions(n, greedy=False)
        sample_correct = (sample_reward >= plan.success_threshold).view(-1, n)
        answers = [
            [plan.answer_extractor(text) for text in texts[i * n : (i + 1) * n]]
            for i in range(len(texts) // n)
        ]
        majority = majority_correct(answers, sample_correct)
    return EvaluationBatch(
        greedy_correct=greedy_reward >= plan.success_threshold,
        greedy_reward=greedy_reward,
        greedy_length=mask.sum(dim=1),
        sample_correct=sample_correct,
        majority_correct=majority,
    )
