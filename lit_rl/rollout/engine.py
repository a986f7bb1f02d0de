"""Rollout engines: sample G completions per prompt from the policy's current weights.

``HFGenerateEngine`` is transformers ``generate``; ``PackedEngine`` runs Llama-family models
through ``PackedDecoder``, faster; ``default_engine`` picks between them by device; vLLM plugs
in here.
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_rl.models.sequences import position_ids_from_mask
from lit_rl.rollout.decoder import PackedDecoder, prefill_mask, unsupported_reason
from lit_rl.rollout.sampler import sample_tokens


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True  # False = greedy (evaluation)


@dataclass
class Generation:
    completion_ids: torch.Tensor  # [N, T] prompt-major, pad_token_id after each row's EOS
    # [N, T] float32 logprob of each sampled token under the engine's tempered, untruncated
    # distribution, to check against the trainer's; None when the engine does not report it.
    logprobs: torch.Tensor | None = None


class RolloutEngine(Protocol):
    """Generates completions for left-padded prompts with ``model``'s current weights (an
    engine that keeps its own copy of the weights syncs them here)."""

    def generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        prompt_mask: torch.Tensor,  # [B, P]
        num_generations: int,
        sampling: SamplingParams,
        pad_token_id: int,
        eos_token_ids: list[int],
    ) -> Generation:  # N = B*G rows
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
    ) -> Generation:
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
        return Generation(output[:, prompt_ids.shape[1] :])


class PackedEngine:
    """Samples through ``PackedDecoder``: the policy's weights packed once per generation
    (q/k/v fused, LoRA adapters applied unmerged in float32, CPU weights prepacked), a KV
    cache allocated once, and an exact inverse-CDF sampler; 1.4-1.7x the tokens/s of
    ``generate`` on a CPU, 1.8-2.1x on a GPU when timed alone (docs/benchmarks.md). Models it
    cannot run exactly (not Llama/Qwen2, DoRA, sliding windows, ...) go to
    ``HFGenerateEngine``, with the reason logged once.

    Rows stop at their first EOS (later positions hold ``pad_token_id``); decoding ends when
    every row has stopped or after ``max_new_tokens``.
    """

    def __init__(self, prepack: bool = True) -> None:
        """``prepack``: reorder the CPU weights for the batch's products at every generation
        (1.6x faster bf16 products for a transient copy of the weights, ~270 MB for a 135M
        model in bf16; with ``activation_checkpointing`` that copy sets the step's peak
        memory). No effect on a GPU."""
        self.prepack = prepack
        self.fallback = HFGenerateEngine()
        self._fallback_reasons: set[str] = set()

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        prompt_mask: torch.Tensor,  # [B, P]
        num_generations: int,
        sampling: SamplingParams,
        pad_token_id: int,
        eos_token_ids: list[int],
    ) -> Generation:
        reason = unsupported_reason(model)
        if reason is not None:
            if reason not in self._fallback_reasons:
                self._fallback_reasons.add(reason)
                rank_zero_info(f"lit_rl: sampling with transformers generate ({reason})")
            return self.fallback.generate(
                model,
                prompt_ids,
                prompt_mask,
                num_generations,
                sampling,
                pad_token_id,
                eos_token_ids,
            )
        ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        prompt_valid = prompt_mask.repeat_interleave(num_generations, dim=0).bool()
        rows, prompt_len = ids.shape
        # The current weights, dropped after this call.
        decoder = PackedDecoder(model, rows=rows if self.prepack else None)
        max_new = sampling.max_new_tokens
        cache = decoder.new_cache(rows, prompt_len + max_new)
        cos, signed_sin = decoder.rotary_table(prompt_len + max_new)
        # Positions skip the left padding, as in generate and the trainer's forward passes.
        positions = position_ids_from_mask(prompt_valid)
        next_position = prompt_valid.sum(-1)  # [N]
        # Keys a query may attend to: real prompt tokens, then every generated slot.
        key_valid = torch.cat([prompt_valid, prompt_valid.new_ones(rows, max_new)], dim=1)
        logits = decoder.forward(
            ids, cos[positions], signed_sin[positions], cache, 0, prefill_mask(prompt_valid)
        )
        eos = torch.tensor(eos_token_ids, device=ids.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
        tokens, logprobs = [], []
        for step in range(max_new):
            token, logprob = sample_tokens(
                logits, sampling.temperature, sampling.top_p, greedy=not sampling.do_sample
            )
            token = token.masked_fill(finished, pad_token_id)
            tokens.append(token)
            logprobs.append(logprob.masked_fill(finished, 0.0))
            finished |= torch.isin(token, eos)
            if step == max_new - 1 or bool(finished.all()):
                break
            position = (next_position + step)[:, None]
            end = prompt_len + step + 1
            logits = decoder.forward(
                token[:, None],
                cos[position],
                signed_sin[position],
                cache,
                end - 1,
                key_valid[:, None, None, :end],
            )
        return Generation(torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1))


def default_engine(device: torch.device) -> RolloutEngine:
    """The engine used where none is chosen: ``PackedEngine`` on a CPU, transformers
    ``generate`` elsewhere.

    On a CPU the packed engine decodes 1.4-1.7x faster and the default recipe learned as
    much with it (held-out accuracy over five seeds each, docs/results.md). On a GPU it ran
    1.8-2.1x faster alone but no faster than ``generate`` inside the one training run measured
    there (docs/benchmarks.md), a gap not yet explained: ``generate`` until it is.
    """
    return PackedEngine() if torch.device(device).type == "cpu" else HFGenerateEngine()


def completion_mask_from_eos(
    completion_ids: torch.Tensor,  # [N, T]
    eos_token_ids: list[int],
) -> torch.Tensor:  # [N, T] bool
    """True up to and including the first EOS token of each row (all True if none)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # Tokens strictly after the first EOS have at least one EOS before them.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0
