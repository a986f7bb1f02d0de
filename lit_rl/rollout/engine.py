"""The rollout engine interface: one engine per run, with a lifecycle.

    setup(policy, sampling)        once, before the first sync
    sync_weights(policy, version)  whenever the policy changed (after optimizer steps); returns
                                   the fingerprint of the weights the engine now holds
    wake() / generate(request) / sleep()
                                   every rollout and evaluation; an engine that shares the
                                   accelerator with training frees its memory while asleep
    close()                        at the end of the run

Engines: ``HFGenerateEngine`` (transformers ``generate``), ``PackedEngine`` (CPUs, Llama-family
models decoded by ``PackedDecoder``), ``VLLMEngine`` (GPUs, the ``lit_rl[vllm]`` extra).
``default_engine`` picks between the first two by device.
"""

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn

from lit_rl.rollout.host_memory import release_freed_host_memory
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams

NOT_SYNCED = -1  # weights_version of an engine that holds no weights yet


class RolloutEngine(Protocol):
    """What every engine implements (``lit_rl.rollout.InProcessEngine`` gives the lifecycle
    of an engine that samples from the policy module itself)."""

    name: str  # named in errors and logs
    weights_version: int  # the version last synced; NOT_SYNCED before the first sync
    weights_fingerprint: float  # ``weights_fingerprint`` of the weights it holds

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None: ...

    def sync_weights(self, policy: nn.Module, version: int) -> float: ...

    def generate(self, request: GenerationRequest) -> Generation: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


def weights_fingerprint(tensors: Iterable[torch.Tensor]) -> float:
    """A cheap checksum of weights: per tensor, the sum and the sum of squares of every 997th
    entry (all of a LoRA adapter's small factors; ~0.1% of a full model), in float64.

    Two syncs of the same weights give the same number; any update of the tensors changes it
    (a step moves every trained entry, sampled or not). It names which version an engine holds;
    the logprob check tells whether it samples with it.
    """
    total: torch.Tensor | float = 0.0
    for index, tensor in enumerate(tensors):
        # On the tensor's own device: one transfer at the end, not one per tensor.
        sample = tensor.detach().reshape(-1)[::997].double()
        total = total + (index + 1) * sample.sum() + sample.square().sum()
    return float(total)


def trained_weights(policy: nn.Module) -> list[torch.Tensor]:
    """What changes between syncs: the parameters that train (LoRA: the adapters)."""
    return [p for p in policy.parameters() if p.requires_grad]


class InProcessEngine:
    """The lifecycle of an engine that samples from the policy module itself, in this process:
    a sync records the module (its weights are the engine's weights; under FSDP2 they are
    gathered for the sync and the generation that follows); asleep, the generation's freed
    host memory goes back to the OS."""

    name = "in-process"

    def __init__(self) -> None:
        self.weights_version = NOT_SYNCED
        self.weights_fingerprint = float("nan")
        self.policy: nn.Module | None = None

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None:
        pass

    def sync_weights(self, policy: nn.Module, version: int) -> float:
        self.policy = policy
        self.weights_version = version
        self.weights_fingerprint = weights_fingerprint(trained_weights(policy))
        return self.weights_fingerprint

    def synced_policy(self) -> nn.Module:
        if self.policy is None:
            raise RuntimeError(f"{self.name}: generate before the first sync_weights")
        return self.policy

    def answer(self, completion_ids: torch.Tensor, logprobs: torch.Tensor) -> Generation:
        return Generation(completion_ids, logprobs, self.weights_version, self.weights_fingerprint)

    def sleep(self) -> None:
        # The generation's transient buffers are freed: hand their pages back before the
        # update allocates its own (host memory only; CUDA's caching allocator keeps its own).
        if self.policy is not None and next(self.policy.parameters()).device.type == "cpu":
            release_freed_host_memory()

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self.policy = None
        self.weights_version = NOT_SYNCED


def completion_mask_from_eos(
    completion_ids: torch.Tensor,  # [N, T]
    eos_token_ids: Iterable[int],
) -> torch.Tensor:  # [N, T] bool
    """True up to and including the first EOS token of each row (all True if none)."""
    eos = torch.tensor(list(eos_token_ids), device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)
    # Tokens strictly after the first EOS have at least one EOS before them.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0
