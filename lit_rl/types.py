"""Data passed between the rollout callback and the training step, each field with its shape."""

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    """One batch of sampled completions, scored, ready for the policy update.

    N = prompts x G rollouts, prompt-major (rows k*G .. k*G+G-1 share prompt k);
    P = padded prompt length (left padding), T = padded completion length.
    """

    input_ids: torch.Tensor  # [N, P+T] prompt tokens then completion tokens
    attention_mask: torch.Tensor  # [N, P+T] 1 = real token (prompt padding is 0)
    completion_mask: torch.Tensor  # [N, T] bool, True up to and including the first EOS
    rewards: torch.Tensor  # [N] total reward per completion
    advantages: torch.Tensor  # [N] (outcome) or [N, T] (per token)
    old_logprobs: torch.Tensor | None  # [N, T] pi_old; None = first update is on-policy
    ref_logprobs: torch.Tensor | None  # [N, T] pi_ref; None when beta = 0
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N]
    prompts: list[str] = field(default_factory=list)  # N prompt texts (for logging)
    completions: list[str] = field(default_factory=list)  # N completion texts

    @property
    def completion_length(self) -> int:
        return self.completion_mask.shape[1]
