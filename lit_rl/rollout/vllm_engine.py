"""VLLMEngine: vLLM in the training process, sharing the GPU with training (``lit_rl[vllm]``).

vLLM is imported when the engine is set up, never before: ``make test`` and CI do not install
it (the suite drives this engine through a stand-in ``vllm`` module).
"""

import gc
import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from torch.distributed.fsdp import FSDPModule

from lit_rl.models.lora import merged_state_dict
from lit_rl.rollout.engine import NOT_SYNCED, trained_weights, weights_fingerprint
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams


@contextmanager
def launcher_environment() -> Iterator[None]:
    """The variables vLLM's in-process launcher reads (a torchrun-started process has them;
    a single Lightning process does not), set for the engine's creation only: left behind,
    they would tell every later Lightning launch that it is one process of one."""
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "localhost",
        "MASTER_PORT": "29511",
    }
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "VLLMEngine needs vLLM on a CUDA machine: pip install 'lit_rl[vllm]' (or pick "
            "lit_rl.rollout.HFGenerateEngine / PackedEngine)"
        ) from err
    return vllm


class VLLMEngine:
    """vLLM colocated in-process: one ``vllm.LLM`` per training process, asleep while the
    trainer computes (level-1 sleep: weights offloaded to CPU memory, KV cache freed).

    Weight sync: under LoRA the policy's adapter alone is handed to vLLM as a ``LoRARequest``
    (a new adapter id per version, written to a private directory: a few MB), where vLLM's
    LoRA kernels serve the model; otherwise, or with ``lora_as_adapter: false``, the merged
    weights are loaded into vLLM's model by name. vLLM reports the logprob of every sampled
    token after temperature (``logprobs_mode="processed_logprobs"``), the distribution the
    trainer scores; a nucleus (``top_p < 1``) would renormalise those logprobs, so it is
    refused here.

    Args:
        gpu_memory_utilization: the fraction of the GPU vLLM may take for weights and KV cache;
            the rest is training's.
        sleep_mode: sleep between generations (frees the KV cache for training).
        lora_as_adapter: sync LoRA policies as adapters (else merged weights).
        dtype: vLLM's weights dtype (``auto``: the checkpoint's).
        max_num_seqs: sequences vLLM decodes at once.
        enforce_eager: no CUDA graphs (faster start, slower decoding).
        seed: vLLM's sampling seed, offset by the process rank.
    """

    name = "VLLMEngine"

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        sleep_mode: bool = True,
        lora_as_adapter: bool = True,
        dtype: str = "auto",
        max_num_seqs: int = 256,
        enforce_eager: bool = False,
        seed: int = 0,
    ) -> None:
        self.gpu_memory_utilization = gpu_memory_utilization
        self.sleep_mode = sleep_mode
        self.lora_as_adapter = lora_as_adapter
        self.dtype = dtype
        self.max_num_seqs = max_num_seqs
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.weights_version = NOT_SYNCED
        self.weights_fingerprint = float("nan")
        self.vllm: ModuleType | None = None
        self.lora_request_class: Any = None
        self.llm: Any = None
        self.uses_adapter = False
        self.lora_request: Any = None
        self.adapter_dir: tempfile.TemporaryDirectory | None = None
        self.asleep = False

    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None:
        if sampling.top_p < 1:
            raise ValueError(
                f"VLLMEngine with top_p={sampling.top_p}: vLLM's logprobs would be of the "
                "renormalised nucleus, not the tempered distribution the trainer scores; use "
                "top_p: 1.0, or HFGenerateEngine"
            )
        if any(isinstance(module, FSDPModule) for module in policy.modules()):
            raise ValueError(
                "VLLMEngine does not sync FSDP2-sharded policies yet (its adapter and merged "
                "state dicts would be shards): use strategy: ddp with VLLMEngine, or "
                "HFGenerateEngine under FSDP2Strategy"
            )
        self.vllm = vllm = import_vllm()
        is_peft = isinstance(policy, PeftModel)
        base = policy.get_base_model() if is_peft else policy
        self.uses_adapter = is_peft and self.lora_as_adapter
        rank = int(os.environ.get("RANK", 0))
        lora: dict[str, Any] = {}
        if self.uses_adapter:
            config = policy.peft_config[policy.active_adapter]
            lora = dict(enable_lora=True, max_lora_rank=config.r, max_loras=1)
            self.lora_request_class = importlib.import_module("vllm.lora.request").LoRARequest
            self.adapter_dir = tempfile.TemporaryDirectory(prefix="lit_rl-vllm-lora-")
        # In-process workers ("external_launcher"): vLLM's model is this process's, so a sync
        # is a copy on the GPU, and every training process has its own engine.
        with launcher_environment():
            self.llm = vllm.LLM(
                model=base.config._name_or_path,
                dtype=self.dtype,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enable_sleep_mode=self.sleep_mode,
                max_num_seqs=self.max_num_seqs,
                enforce_eager=self.enforce_eager,
                distributed_executor_backend="external_launcher",
                seed=self.seed + rank,
                logprobs_mode="processed_logprobs",
                **lora,
            )

    def sync_weights(self, policy: nn.Module, version: int) -> float:
        if self.uses_adapter:
            path = Path(self.adapter_dir.name) / f"v{version}"
            policy.save_pretrained(path, selected_adapters=[policy.active_adapter])
            # vLLM caches adapters by id: a new id per version, so the new one is loaded.
            self.lora_request = self.lora_request_class(
                f"policy-v{version}", version + 2, str(path)
            )
        else:
            state = (
                merged_state_dict(policy, policy.state_dict())
                if isinstance(policy, PeftModel)
                else policy.state_dict()
            )
            self.vllm_model().load_weights(state.items())
            self.llm.reset_prefix_cache()
        self.weights_version = version
        self.weights_fingerprint = weights_fingerprint(trained_weights(policy))
        return self.weights_fingerprint

    def vllm_model(self) -> nn.Module:
        """vLLM's own model in this process (the in-process executor's worker)."""
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> Generation:
        sampling = request.sampling
        params = self.vllm.SamplingParams(
            n=request.num_generations,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=1.0,
            top_k=-1,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(request.eos_token_ids),
            logprobs=0,  # the sampled token's own logprob
        )
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}
            for ids, mask in zip(request.prompt_ids, request.prompt_mask, strict=True)
        ]
        outputs = self.llm.generate(
            prompts, sampling_params=params, lora_request=self.lora_request, use_tqdm=False
        )
        rows = [completion for output in outputs for completion in output.outputs]
        length = max(1, *(len(row.token_ids) for row in rows))
        completion_ids = torch.full((len(rows), length), request.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), length)
        for i, row in enumerate(rows):
            tokens = list(row.token_ids)
            completion_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logprobs[i, : len(tokens)] = torch.tensor(
                [step[token].logprob for step, token in zip(row.logprobs, tokens, strict=True)]
            )
        device = request.prompt_ids.device
        return Generation(
            completion_ids.to(device),
            logprobs.to(device),
            self.weights_version,
            self.weights_fingerprint,
        )

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        self.llm = None
        self.weights_version = NOT_SYNCED
        if self.adapter_dir is not None:
            self.adapter_dir.cleanup()
            self.adapter_dir = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
