"""CompletionSampler: the policy's completions for a batch of prompts, sampled by the run's engine
and decoded for the reward; rollouts and evaluation both sample through it."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lit_rl.rollout.engine import RolloutEngine, completion_mask_from_eos
from lit_rl.rollout.request import GenerationRequest, SamplingParams
from lit_rl.rollout.session import EngineSession

# How to see a policy's whole weights for a generation (FSDP2 gathers its shards once).
WholeWeights = Callable[[nn.Module], AbstractContextManager[nn.Module]]


@dataclass(frozen=True)
class Completions:
    """N = B x G sampled completions, prompt-major (rows k*G .. k*G+G-1 answer prompt k)."""

    ids: torch.Tensor  # [N, T] pad_token_id after each row's EOS
    mask: torch.Tensor  # [N, T] bool, True up to and including the first EOS
    texts: list[str]  # N decoded completions (through the EOS, special tokens skipped)
    logprobs: torch.Tensor  # [N, T] float32, the engine's logprob of each sampled token
    weights_version: int  # the optimizer step whose weights sampled them
    weights_fingerprint: float  # of those weights, as the engine holds them


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

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def sample(
        self,
        prompt_ids: torch.Tensor,  # [B, P] left-padded
        prompt_mask: torch.Tensor,  # [B, P]
        num_generations: int,
        version: int,
        greedy: bool = False,
    ) -> Completions:
        """``num_generations`` completions per prompt from the policy's weights at ``version``
        (optimizer steps taken), sampled at the training distribution or greedily."""
        sampling = self.sampling
        if greedy:
            sampling = SamplingParams(sampling.max_new_tokens, do_sample=False)
        request = GenerationRequest(
            prompt_ids,
            prompt_mask,
            num_generations,
            sampling,
            self.pad_token_id,
            self.eos_token_ids,
        )
        with self.whole_weights(self.policy) as policy:
            generation = self.session.generate(policy, request, version)
        ids = generation.completion_ids
        mask = completion_mask_from_eos(ids, self.eos_token_ids)
        rows = torch.where(mask, ids, self.pad_token_id).tolist()
        # (transformers 5.19 decodes no rows as one empty text)
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True) if rows else []
        return Completions(
            ids=ids,
            mask=mask,
            texts=texts,
            logprobs=generation.logprobs,
            weights_version=generation.weights_version,
            weights_fingerprint=generation.weights_fingerprint,
        )

    def decode(self, ids: list[int]) -> str:
        """The text of token ids as the reward sees completions (special tokens skipped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        """End the engine's part of the run (a later sample sets it up again)."""
        self.session.close()
