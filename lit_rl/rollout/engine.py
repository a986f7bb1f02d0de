"""Rollout engines: sample G completions per prompt. HF ``generate`` now; vLLM plugs in here."""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True  # False = greedy (evaluation)


class RolloutEngine(Protocol):
    """Generates completions for left-padded prompts with the current policy weights."""

    def generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        prompt_mask: torch.Tensor,  # [B, P]
        num_generations: int,
        sampling: SamplingParams,
        pad_token_id: int,
        eos_token_ids: list[int],
    ) -> torch.Tensor:  # [B*G, T] completion tokens, prompt-major, padded after EOS
        ...


class HFGenerateEngine:
    """transformers ``generate`` with the KV cache, in eval mode, without gradients.

    Sampling is from the untruncated distribution at ``temperature`` (``top_k`` off) unless
    ``top_p < 1``, so the logprobs the loss uses describe the distribution actually sampled.
    """

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        num_generations: int,
        sampling: SamplingParams,
        pad_token_id: int,
        eos_token_ids: list[int],
    ) -> torch.Tensor:
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            kwargs = (
                dict(
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=None,
                )
                if sampling.do_sample
                else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            )
            # Repeat each prompt G times (prompt-major) rather than num_return_sequences,
            # which transformers refuses for greedy decoding.
            output = model.generate(
                input_ids=prompt_ids.repeat_interleave(num_generations, dim=0),
                attention_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_ids,
                use_cache=True,
                **kwargs,
            )
        finally:
            model.train(was_training)
        return output[:, prompt_ids.shape[1] :]


def completion_mask_from_eos(
    completion_ids: torch.Tensor,  # [N, T]
    eos_token_ids: list[int],
) -> torch.Tensor:  # [N, T] bool
    """True up to and including the first EOS token of each row (all True if none)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # Tokens strictly after the first EOS have at least one EOS before them.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0
