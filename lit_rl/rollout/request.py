"""What is asked of a rollout engine and what it answers: ``GenerationRequest`` -> ``Generation``."""

from dataclasses import dataclass

import torch

from lit_rl.rollout.stops import StopStrings


@dataclass(frozen=True)
class SamplingParams:
    """The whole sampling distribution: ``softmax(logits / temperature)`` restricted to the
    top-p nucleus, or its argmax when ``do_sample`` is False. Engines sample exactly this and
    nothing else (no repetition penalty, top-k or min-p from a checkpoint's
    ``generation_config``), so the loss scores the distribution that was sampled."""

    max_new_tokens: int = 256  # a module's max_completion_length
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True  # False = greedy (evaluation)
    stop: tuple[str, ...] = ()  # strings that end a completion as EOS does (StopStrings)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"max_completion_length (max_new_tokens) must be >= 1, got {self.max_new_tokens}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class GenerationRequest:
    """G completions for each of B left-padded prompts."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real token
    num_generations: int  # G
    sampling: SamplingParams
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    stop: StopStrings | None = None  # sampling.stop, matched in the text of the sampled ids

    def __post_init__(self) -> None:
        if self.prompt_ids.dim() != 2 or self.prompt_ids.shape != self.prompt_mask.shape:
            raise ValueError(
                f"a GenerationRequest needs prompt_ids and prompt_mask of one shape [B, P], got "
                f"{tuple(self.prompt_ids.shape)} and {tuple(self.prompt_mask.shape)}"
            )
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if not self.eos_token_ids:
            raise ValueError("a GenerationRequest needs at least one EOS token id")
        if bool(self.sampling.stop) != (self.stop is not None):
            raise ValueError(
                "a GenerationRequest with stop strings needs their matcher (stop=StopStrings), "
                "and one without none"
            )

    @property
    def num_rows(self) -> int:  # N = B * G
        return self.prompt_ids.shape[0] * self.num_generations

    def repeated_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:  # 2 x [N, P]
        """Each prompt repeated G times, prompt-major (rows k*G .. k*G+G-1 are prompt k)."""
        g = self.num_generations
        return self.prompt_ids.repeat_interleave(g, 0), self.prompt_mask.repeat_interleave(g, 0)


@dataclass
class Generation:
    """An engine's answer to a ``GenerationRequest``: N = B * G rows, prompt-major."""

    completion_ids: torch.Tensor  # [N, T] pad_token_id after each row's EOS
    # [N, T] float32: log-probability of each sampled token under the engine's own weights and
    # the request's tempered, untruncated distribution (0 after EOS), checked against the
    # trainer's after every sync.
    logprobs: torch.Tensor
    weights_version: int  # the version of the weights that sampled these rows
    weights_fingerprint: (
        float  # theirs, read from the engine's storage (lit_rl.rollout.fingerprint)
    )

    def __post_init__(self) -> None:
        if self.logprobs.shape != self.completion_ids.shape:
            raise ValueError(
                f"a Generation needs one logprob per completion token: completion_ids "
                f"{tuple(self.completion_ids.shape)}, logprobs {tuple(self.logprobs.shape)}"
            )
