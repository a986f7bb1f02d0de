"""Sequences: prompt + completion token rows, the one type every forward pass scores."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sequences:
    """N rows of left-padded prompt tokens followed by T completion tokens.

    The trainer scores the last ``num_completion_tokens`` positions of every row (logprobs,
    entropy, values); the prompt's logits are never computed.
    """

    input_ids: torch.Tensor  # [N, P+T]
    attention_mask: torch.Tensor  # [N, P+T] 1 = real token (prompt padding is 0)
    num_completion_tokens: int  # T

    @property
    def position_ids(self) -> torch.Tensor:  # [N, P+T]
        """Positions that skip left padding: what the engines sample with, so the trainer's
        forward passes score the same tokens."""
        return position_ids_from_mask(self.attention_mask)

    @property
    def completion_ids(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, -self.num_completion_tokens :]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:  # [N, L]
    """Positions that skip left padding (the first real token is at position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
