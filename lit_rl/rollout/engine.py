"""The rollout engine interface: one engine per run, with a lifecycle.

    setup(policy, sampling)        once, before the first sync
    sync_weights(policy, version)  whenever the policy changed (after optimizer steps); returns
                                   the fingerprint those weights must have in the engine's own
                                   storage (``lit_rl.rollout.fingerprint``)
    wake() / generate(request) / sleep()
                                   every rollout and evaluation; the ``Generation`` carries the
                                   fingerprint read from the weights it was sampled with; an
                                   engine that shares the accelerator with training frees its
                                   memory while asleep
    close()                        at the end of the run

Engines: ``HFGenerateEngine`` (transformers ``generate``), ``PackedEngine`` (CPUs, Llama-family
models decoded by ``PackedDecoder``), ``VLLMEngine`` (the ``lit_rl[vllm]`` extra).
``default_engine`` picks between the first two by device.
"""

import copy
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from lit_rl.rollout.fingerprint import policy_fingerprint
from lit_rl.rollout.host_memory import release_freed_host_memory
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams

NOT_SYNCED = -1  # weights_version of an engine that holds no weights yet


class RolloutEngine(Protocol):
    """What every engine implements (``lit_rl.rollout.InProcessEngine`` gives the lifecycle
    of an engine that samples from the policy module itself)."""

    name: str  # named in errors and logs
    weights_version: int  # the version last synced; NOT_SYNCED before the first sync

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None: ...

    def sync_weights(self, policy: nn.Module, version: int) -> float: ...

    def generate(self, request: GenerationRequest) -> Generation: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ProbesSyncs(Protocol):
    """An engine whose weights live out of reach (another process or node) and that checks
    each sync itself: the largest gap, over its servers, between their logprobs and the
    trainer's on a fixed probe after the last sync (``VLLMServerEngine``), logged as
    ``rollout/sync_probe_gap``."""

    last_probe_gap: float


@runtime_checkable
class SamplesAhead(Protocol):
    """An engine that may sample on a worker thread while the update changes the policy
    (rollouts ahead: ``RolloutCallback(max_staleness > 0)``). ``sample_ahead()`` is called once,
    before the first sync; from then on every sync leaves the engine weights of its own, a copy
    in this process or another process's, that the update cannot reach."""

    def sample_ahead(self) -> None: ...


class InProcessEngine:
    """The lifecycle of an engine that samples from the policy module itself, in this process:
    a sync records the module (its weights are the engine's weights; under FSDP2 they are
    gathered for the sync and the generation that follows), whose fingerprint its generations
    carry (an engine that copies the weights reports its copy's instead: ``answer(...,
    fingerprint)``); asleep, the generation's freed host memory goes back to the OS.

    Sampling ahead (``sample_ahead``), a sync copies the policy instead, into one copy kept for
    the run: the update may then change the policy while the engine samples on another thread.
    """

    name = "in-process"

    def __init__(self) -> None:
        self.weights_version = NOT_SYNCED
        self.policy: nn.Module | None = None
        self.copies = False  # sample_ahead: each sync copies the policy into own_copy
        self.own_copy: nn.Module | None = None

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None:
        pass

    def sample_ahead(self) -> None:
        """From the next sync on, sample from a copy of the weights taken at each sync: one
        more copy of the model in memory (the policy's parameters and buffers, no gradients
        or optimizer state)."""
        self.copies = True

    def sync_weights(self, policy: nn.Module, version: int) -> float:
        self.policy = self._copy(policy) if self.copies else policy
        self.weights_version = version
        # The policy's, not the copy's: each generation reads its weights' fingerprint from
        # what sampled it, so a copy that missed a weight is caught there.
        return policy_fingerprint(policy)

    @torch.no_grad()
    def _copy(self, policy: nn.Module) -> nn.Module:
        """``policy``'s weights in the engine's own copy (made at the first sync, in eval mode
        and without gradients; later syncs copy into it in place)."""
        if any(isinstance(module, FSDPModule) for module in policy.modules()):
            raise ValueError(
                f"{self.name} samples ahead (max_staleness > 0) from a copy of the policy, and "
                "FSDP2 shards it: use max_staleness: 0 under FSDP2Strategy, or strategy: ddp"
            )
        if self.own_copy is None:
            own = copy.deepcopy(policy).eval()
            for parameter in own.parameters():
                parameter.requires_grad_(False)
                parameter.grad = None
            self.own_copy = own
        else:
            own_state = self.own_copy.state_dict()
            for name, value in policy.state_dict().items():
                own_state[name].copy_(value)
        return self.own_copy

    def synced_policy(self) -> nn.Module:
        if self.policy is None:
            raise RuntimeError(f"{self.name}: generate before the first sync_weights")
        return self.policy

    def answer(
        self, completion_ids: torch.Tensor, logprobs: torch.Tensor, fingerprint: float | None = None
    ) -> Generation:
        """The generation, with the fingerprint of the weights that sampled it: read from the
        module it holds, unless the engine read its own copy's."""
        held = policy_fingerprint(self.synced_policy()) if fingerprint is None else fingerprint
        return Generation(completion_ids, logprobs, self.weights_version, held)

    def sleep(self) -> None:
        # The generation's transient buffers are freed: hand their pages back before the
        # update allocates its own (host memory only; CUDA's caching allocator keeps its own).
        if self.policy is not None and next(self.policy.parameters()).device.type == "cpu":
            release_freed_host_memory()

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self.policy = self.own_copy = None
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
