"""HFGenerateEngine: transformers ``generate`` sampling exactly lit_rl's ``SamplingParams``."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import nn
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from lit_rl.rollout.engine import InProcessEngine, completion_mask_from_eos
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams
from lit_rl.rollout.sampler import top_p_filter
from lit_rl.rollout.stops import StopStrings


class SamplerLogprobs(LogitsProcessor):
    """The only logits processor of a generation: applies the temperature and the nucleus
    itself and records the log-probability of each sampled token under the tempered,
    untruncated distribution (the one the loss scores).

    transformers calls it once per new token with the ids so far; the token sampled from
    the previous call's scores is then the last id, so one step's log-softmax [N, V] is kept
    at a time (``output_logits`` would keep every step's, T x N x V floats).
    """

    def __init__(self, sampling: SamplingParams) -> None:
        self.sampling = sampling
        self.previous: torch.Tensor | None = None  # [N, V] log-softmax of the last step
        self.logprobs: list[torch.Tensor] = []  # T x [N]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.previous is not None:
            self.record(input_ids[:, -1])
        scaled = scores.float() / self.sampling.temperature
        self.previous = scaled.log_softmax(dim=-1)
        return top_p_filter(scaled, self.sampling.top_p) if self.sampling.do_sample else scaled

    def record(self, tokens: torch.Tensor) -> None:  # [N]
        self.logprobs.append(self.previous.gather(-1, tokens[:, None]).squeeze(-1))

    def result(self, completion_ids: torch.Tensor) -> torch.Tensor:  # [N, T] -> [N, T]
        self.record(completion_ids[:, -1])
        return torch.stack(self.logprobs, dim=1)


def explicit_generation_config(
    sampling: SamplingParams, pad_token_id: int, eos_token_ids: tuple[int, ...]
) -> GenerationConfig:
    """Every setting that changes which tokens are drawn, set to what ``sampling`` says (the
    temperature and nucleus are applied by ``SamplerLogprobs``)."""
    # transformers' own top-k default is 50; greedy decoding ignores it (and warns if set).
    top_k = {"top_k": 0} if sampling.do_sample else {}
    return GenerationConfig(
        do_sample=sampling.do_sample,
        temperature=1.0,
        top_p=1.0,
        **top_k,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=list(eos_token_ids),
        use_cache=True,
    )


@contextmanager
def without_checkpoint_generation_config(model: nn.Module) -> Iterator[None]:
    """``generate`` fills every setting a request leaves unset from the model's own
    ``generation_config`` (an instruct checkpoint's repetition penalty, top-k, min-p, ...):
    for the call, the model's is transformers' neutral default instead."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    saved = causal_lm.generation_config
    causal_lm.generation_config = GenerationConfig()
    try:
        yield
    finally:
        causal_lm.generation_config = saved


class StopCriteria(StoppingCriteria):
    """transformers' stopping criterion for lit_rl's ``StopStrings``: a row is done once its
    newest token completes a stop string (the rule every engine applies)."""

    def __init__(self, stop: StopStrings, prompt_ids: torch.Tensor) -> None:
        self.stop = stop
        self.prompt_length = prompt_ids.shape[1]

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: object
    ) -> torch.BoolTensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.stop.window)
        completions = input_ids[:, start:].tolist()  # each completion's newest tokens
        done = [self.stop.completed_by_last(row) for row in completions]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFGenerateEngine(InProcessEngine):
    """transformers ``generate`` with the KV cache, in eval mode, without gradients, on the
    policy's own weights.

    The sampled distribution is ``SamplingParams``' alone: the checkpoint's
    ``generation_config`` is ignored, and the sampler's logprobs are returned.
    """

    name = "HFGenerateEngine"

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> Generation:
        model = self.synced_policy()
        input_ids, attention_mask = request.repeated_prompts()
        recorder = SamplerLogprobs(request.sampling)
        config = explicit_generation_config(
            request.sampling, request.pad_token_id, request.eos_token_ids
        )
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            with without_checkpoint_generation_config(model):
                # Prompts repeated G times (prompt-major) rather than num_return_sequences,
                # which transformers refuses for greedy decoding.
                stops = [] if request.stop is None else [StopCriteria(request.stop, input_ids)]
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                    stopping_criteria=StoppingCriteriaList(stops),
                )
        finally:
            model.train(was_training)
        completion_ids = output[:, input_ids.shape[1] :]
        logprobs = recorder.result(completion_ids)
        # Rows that stopped are padded after their EOS: no sampled token there.
        sampled = completion_mask_from_eos(completion_ids, request.eos_token_ids)
        return self.answer(completion_ids, logprobs.masked_fill(~sampled, 0.0))
