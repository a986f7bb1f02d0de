"""PackedEngine: sampling through ``PackedDecoder``, the CPU default."""

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel

from lit_rl.models.sequences import position_ids_from_mask
from lit_rl.rollout.decoder import PackedDecoder, prefill_mask, unsupported_reason
from lit_rl.rollout.engine import InProcessEngine
from lit_rl.rollout.hf_engine import HFGenerateEngine
from lit_rl.rollout.request import Generation, GenerationRequest
from lit_rl.rollout.sampler import sample_tokens
from lit_rl.rollout.stops import StopStrings


class PackedEngine(InProcessEngine):
    """Samples through ``PackedDecoder``: the policy's weights packed for the generation
    (q/k/v fused, LoRA adapters applied unmerged in float32, CPU weights prepacked), a KV
    cache allocated once, and an exact inverse-CDF sampler; 1.4-1.7x the tokens/s of
    ``generate`` on a CPU, 1.8-2.1x on a GPU when timed alone (docs/benchmarks.md). Models it
    cannot run exactly (not Llama/Qwen2, DoRA, sliding windows, ...) go to
    ``HFGenerateEngine``, with the reason logged once.

    Rows stop at their first EOS (later positions hold ``pad_token_id``); decoding ends when
    every row has stopped or after ``max_new_tokens``.
    """

    name = "PackedEngine"

    def __init__(self, prepack: Literal["bf16", "all", "none"] = "bf16") -> None:
        """``prepack``: reorder the CPU base weights for the batch's products at every
        generation. ``bf16``: bf16 weights only, into oneDNN's blocked layout (1.6x faster
        products, bit for bit the plain ones, for a transient copy of the same size, ~270 MB
        for a 135M model); ``all``: float32 weights too, into MKL's packed GEMM (1.1-1.3x faster
        products on the CPUs measured, none on an AMD EPYC with avx512, for a transient copy
        ~1.5x the weights that set the step's peak memory: docs/benchmarks.md); ``none``: plain
        weights. No effect on a GPU."""
        super().__init__()
        if prepack not in ("bf16", "all", "none"):
            raise ValueError(f"PackedEngine prepack must be bf16, all or none, got {prepack!r}")
        self.prepack = prepack
        self.fallback = HFGenerateEngine()
        self._fallback_reasons: set[str] = set()

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> Generation:
        model = self.synced_policy()
        reason = unsupported_reason(model)
        if reason is not None:
            if reason not in self._fallback_reasons:
                self._fallback_reasons.add(reason)
                rank_zero_info(f"lit_rl: sampling with transformers generate ({reason})")
            if self.fallback.weights_version != self.weights_version:
                self.fallback.sync_weights(model, self.weights_version)
            return self.fallback.generate(request)
        ids, prompt_valid = request.repeated_prompts()
        prompt_valid = prompt_valid.bool()
        rows, prompt_len = ids.shape
        sampling = request.sampling
        # The current weights, dropped after this call.
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        weights_dtype = base.get_input_embeddings().weight.dtype
        prepack = self.prepack == "all" or (
            self.prepack == "bf16" and weights_dtype == torch.bfloat16
        )
        decoder = PackedDecoder(model, rows=rows if prepack else None)
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
        eos = torch.tensor(request.eos_token_ids, device=ids.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
        tokens, logprobs = [], []
        for step in range(max_new):
            token, logprob = sample_tokens(
                logits, sampling.temperature, sampling.top_p, greedy=not sampling.do_sample
            )
            token = token.masked_fill(finished, request.pad_token_id)
            tokens.append(token)
            logprobs.append(logprob.masked_fill(finished, 0.0))
            finished |= torch.isin(token, eos)
            if request.stop is not None:
                finished |= stopped_rows(request.stop, tokens, finished)
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
        # Read from the packed copy that sampled, not from the policy it was packed from.
        fingerprint = decoder.fingerprint()
        return self.answer(torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1), fingerprint)


def stopped_rows(
    stop: StopStrings,
    tokens: list[torch.Tensor],  # T x [N], the tokens sampled so far
    finished: torch.Tensor,  # [N] bool
) -> torch.Tensor:  # [N] bool
    """The unfinished rows whose newest token completes a stop string."""
    sampled = torch.stack(tokens[-stop.window :], dim=1).tolist()  # [N, <= window]
    return torch.tensor(
        [
            not done and stop.completed_by_last(row)
            for row, done in zip(sampled, finished.tolist(), strict=True)
        ],
        device=finished.device,
    )
