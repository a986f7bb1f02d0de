"""CompletionSampler: the policy's completions for a batch of prompts, sampled by the run's engine
and decoded for the reward; rollouts and evaluation both sample through it."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lit_rl.rollout.engine import RolloutEngine, completion_mask_from_eos
from lit_rl.rollout.request import GenerationRequest, SamplingParams
from lit_rl.rollout.session import EngineSession
from lit_rl.rollout.stops import StopStrings

# How to see a policy's whole weights for a generation (FSDP2 gathers its shards once).
WholeWeights = Callable[[nn.Module], AbstractContextManager[nn.Module]]


@dataclass(frozen=True)
class Completions:
    """N = B x G rollouts, prompt-major (rows k*G .. k*G+G-1 answer prompt k): one completion
    per row, or one multi-turn episode per row (``lit_rl.rollout.EpisodeCompletions``), where
    everything after the first prompt (the model's turns and the environment's answers, as
    one token sequence) is the completion and its mask marks the tokens the policy sampled."""

    prompt_ids: torch.Tensor  # [N, P] left-padded: the prompt of each row
    prompt_mask: torch.Tensor  # [N, P] 1 = real token
    ids: torch.Tensor  # [N, T] pad_token_id after each row's end
    # [N, T] bool, True on the tokens the policy sampled (what trains): a completion's up to
    # and including its first EOS; an episode's turns, with its environment tokens as gaps
    mask: torch.Tensor
    texts: list[str]  # N texts the reward reads: the completion, or the episode's last turn
    logprobs: torch.Tensor  # [N, T] float32, the engine's logprob of each sampled token, else 0
    truncated: torch.Tensor  # [N] bool: out of budget (a completion without EOS, an episode
    # that was not done)
    weights_version: int  # the optimizer step whose weights sampled them
    weights_fingerprint: float  # of those weights, as the engine holds them
    fields: dict[str, list[Any]] = field(default_factory=dict)  # per-row fields for the reward

    def to(self, device: torch.device) -> "Completions":
        """Every tensor on ``device``."""
        moved = {
            name: value.to(device)
            for name, value in vars(self).items()
            if isinstance(value, torch.Tensor)
        }
        return replace(self, **moved)


class CompletionSampler:
    """Samples the policy through the run's one engine (its lifecycle and sync checks are the
    ``EngineSession``'s) and decodes what it sampled.

    Args:
        engine: the run's engine.
        policy: the network whose weights the engine samples (synced when their version moves).
        tokenizer: decodes completions; its pad token pads them.
        eos_token_ids: the tokens that end a completion.
        sampling: the training distribution (evaluation's greedy decoding shares its length).
        whole_weights: the policy with its full weights in place for one generation (FSDP2:
            gathered once, not per token); by default the policy as it is.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: tuple[int, ...],
        sampling: SamplingParams,
        whole_weights: WholeWeights = nullcontext,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.sampling = sampling
        self.whole_weights = whole_weights
        self.session = EngineSession(engine, sampling)
        self.stop = StopStrings(sampling.stop, self.decode) if sampling.stop else None
        self._awake: nn.Module | None = None  # the whole policy, inside awake()

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def max_rollout_tokens(self) -> int:
        """Tokens after the prompt a rollout may hold (an episode's budget overrides it)."""
        return self.sampling.max_new_tokens

    def sample(
        self,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        prompt_mask: torch.Tensor,  # [B, P]
        num_generations: int,
        version: int,
        greedy: bool = False,
        max_new_tokens: int | None = None,
    ) -> Completions:
        """``num_generations`` completions per prompt from the policy's weights at ``version``
        (optimizer steps taken), sampled at the training distribution or greedily, with the
        training budget of new tokens or ``max_new_tokens``."""
        sampling = self.sampling
        if greedy:
            sampling = SamplingParams(sampling.max_new_tokens, do_sample=False, stop=sampling.stop)
        if max_new_tokens is not None:
            sampling = replace(sampling, max_new_tokens=max_new_tokens)
        request = GenerationRequest(
            prompt_ids,
            prompt_mask,
            num_generations,
            sampling,
            self.pad_token_id,
            self.eos_token_ids,
            self.stop,
        )
        with self.awake(version):
            generation = self.session.generate(request, version)
        ids = generation.completion_ids
        mask, ended = self._sampled(ids)
        rows = torch.where(mask, ids, self.pad_token_id).tolist()
        # (transformers 5.19 decodes no rows as one empty text)
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True) if rows else []
        repeated_ids, repeated_mask = request.repeated_prompts()
        return Completions(
            prompt_ids=repeated_ids,
            prompt_mask=repeated_mask,
            ids=ids,
            mask=mask,
            texts=texts,
            logprobs=generation.logprobs.masked_fill(~mask, 0.0),
            truncated=~ended,
            weights_version=generation.weights_version,
            weights_fingerprint=generation.weights_fingerprint,
        )

    def _sampled(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of the engine's ids the completion holds ([N, T] bool: up to its first EOS,
        or up to the token that completes a stop string, whichever comes first) and whether
        it ended so ([N] bool; else it ran out of tokens)."""
        mask = completion_mask_from_eos(ids, self.eos_token_ids)
        eos = torch.tensor(self.eos_token_ids, device=ids.device)
        ended = (torch.isin(ids, eos) & mask).any(dim=1)
        if self.stop is not None:
            for row, (row_ids, row_mask) in enumerate(zip(ids.tolist(), mask, strict=True)):
                end = self.stop.end(row_ids[: int(row_mask.sum())])
                if end is not None:
                    mask[row, end:] = False
                    ended[row] = True
        return mask, ended

    @contextmanager
    def awake(self, version: int) -> Iterator[nn.Module]:
        """The policy's whole weights (FSDP2: gathered) and the engine awake and synced to
        ``version``, for every sample inside: an episode's turns gather and wake once. Nested,
        the outer one holds."""
        if self._awake is not None:
            yield self._awake
            return
        with self.whole_weights(self.policy) as policy, self.session.awake(policy, version):
            self._awake = policy
            try:
                yield policy
            finally:
                self._awake = None

    def sync(self, version: int) -> None:
        """The engine set up and synced to ``version`` now, with no sample (a sample at that
        version then starts at once: rollouts sampled on another thread sync nothing)."""
        with self.awake(version):
            pass

    def rollouts(
        self, batch: dict[str, Any], num_generations: int, version: int, greedy: bool = False
    ) -> Completions:
        """``num_generations`` rollouts of each of ``batch``'s prompts (its ``input_ids`` and
        ``attention_mask``, [B, P]): here completions; an ``EpisodeSampler``'s are episodes."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] == 0:
            raise ValueError(
                "the prompts are empty (the data's prompt_field is null: an environment writes "
                "them), but these rollouts are single completions: set the module's episodes "
                "with an environment that writes the first messages, or name a prompt_field"
            )
        return self.sample(ids, mask, num_generations, version, greedy)

    def decode(self, ids: list[int]) -> str:
        """The text of token ids as the reward sees completions (special tokens skipped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        """End the engine's part of the run (a later sample sets it up again)."""
        self.session.close()
