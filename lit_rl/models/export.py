"""Save the policy as a directory plain transformers loads: merged weights and tokenizer."""

import copy
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lit_rl.atomic import fsync_tree, replace_folder, staging_path
from lit_rl.models.lora import merged_state_dict


def save_policy(
    policy: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``directory`` with config, safetensors weights and tokenizer, atomically.

    LoRA adapters are merged into the weights on the way out (the live model is untouched),
    so ``AutoModelForCausalLM.from_pretrained(directory)`` needs neither peft nor lit_rl; the
    policy's adapter alone goes to ``directory/adapter`` (``PeftModel.from_pretrained``).
    ``state`` is the policy's full state dict when its own is sharded (gathered by
    ``lit_rl.strategies.full_state_dict``); ``None`` reads it from ``policy``. An existing
    directory is replaced only once the new one is complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(directory)
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's
    try:
        if isinstance(policy, PeftModel):
            base = policy.get_base_model()
            state = policy.state_dict() if state is None else state
            base.save_pretrained(staging, state_dict=merged_state_dict(policy, state))
            # The merged weights are float32 (see merged_state_dict); say so in config.json,
            # or from_pretrained would load them back in the base model's bf16.
            config = copy.deepcopy(base.config)
            config.dtype = torch.promote_types(base.dtype, torch.float32)
            config.save_pretrained(staging)
            policy.save_pretrained(
                staging / "adapter", selected_adapters=[policy.active_adapter], state_dict=state
            )
        else:
            policy.save_pretrained(staging, state_dict=state)
        tokenizer.save_pretrained(staging)
        fsync_tree(staging)
        replace_folder(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
