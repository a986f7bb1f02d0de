"""Save the policy as a directory plain transformers loads: merged weights and tokenizer."""

import copy
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rl.atomic import fsync_tree, replace_folder, staging_path
from lit_rl.models.lora import merged_state_dict


def save_policy(
    policy: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    state: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    adapter_only: bool = False,
) -> Path:
    """Write ``directory`` with config, safetensors weights and tokenizer, atomically.

    LoRA adapters are merged into the weights on the way out (the live model is untouched),
    so ``AutoModelForCausalLM.from_pretrained(directory)`` needs neither peft nor lit_rl; the
    policy's adapter alone goes to ``directory/adapter`` (``PeftModel.from_pretrained``).
    ``state`` is the policy's full state dict when its own is sharded (gathered by
    ``lit_rl.strategies.full_state_dict``); ``None`` reads it from ``policy``. An existing
    directory is replaced only once the new one is complete.

    Args:
        dtype: the merged weights' dtype (and config.json's); ``None``: float32 for a merged
            LoRA policy (a delta is below bf16's rounding step), the weights' own otherwise.
        adapter_only: write the adapter alone (with the tokenizer) in ``directory``, for
            ``PeftModel.from_pretrained(base, directory)``; LoRA policies only.
    """
    if adapter_only and not isinstance(policy, PeftModel):
        raise ValueError("adapter_only needs a LoRA policy: this one was fully fine-tuned")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(directory)
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's
    try:
        if isinstance(policy, PeftModel):
            state = policy.state_dict() if state is None else state
            adapter = staging if adapter_only else staging / "adapter"
            policy.save_pretrained(
                adapter, selected_adapters=[policy.active_adapter], state_dict=state
            )
            if not adapter_only:
                base = policy.get_base_model()
                # The merged weights are float32 (see merged_state_dict) unless asked
                # otherwise; config.json says which, or from_pretrained would load them back
                # in the base model's bf16.
                merged = cast(merged_state_dict(policy, state), dtype)
                base.save_pretrained(staging, state_dict=merged)
                config = copy.deepcopy(base.config)
                config.dtype = dtype or torch.promote_types(base.dtype, torch.float32)
                config.save_pretrained(staging)
        else:
            state = policy.state_dict() if state is None else state
            policy.save_pretrained(staging, state_dict=cast(state, dtype))
            if dtype is not None:
                config = copy.deepcopy(policy.config)
                config.dtype = dtype
                config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        fsync_tree(staging)
        replace_folder(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``state``'s floating-point tensors in ``dtype`` (``None``: as they are)."""
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
