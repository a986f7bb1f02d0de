"""Model loading (embedded default, local directory, hub id), LoRA, reference, value model."""

from lit_rl.models.checkpointing import arm_checkpointed_layers, enable_activation_checkpointing
from lit_rl.models.dtype import DType, DTypeChoice, choose_dtype, fast_bf16, resolve_dtype
from lit_rl.models.export import save_policy
from lit_rl.models.loader import (
    EMBEDDED_ALIASES,
    embedded_model_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from lit_rl.models.lora import apply_lora, merged_state_dict
from lit_rl.models.policy_models import ModelRecipe, PolicyModels, completion_logprobs
from lit_rl.models.reference import frozen_copy, reference_model
from lit_rl.models.sequences import Sequences, position_ids_from_mask
from lit_rl.models.value_head import (
    VALUE_ADAPTER,
    ValueModel,
    adapter_values,
    add_value_adapter,
    value_adapter_parameters,
)

__all__ = [
    "EMBEDDED_ALIASES",
    "DType",
    "DTypeChoice",
    "ModelRecipe",
    "PolicyModels",
    "Sequences",
    "VALUE_ADAPTER",
    "ValueModel",
    "adapter_values",
    "add_value_adapter",
    "apply_lora",
    "arm_checkpointed_layers",
    "choose_dtype",
    "completion_logprobs",
    "embedded_model_dir",
    "enable_activation_checkpointing",
    "fast_bf16",
    "frozen_copy",
    "load_model",
    "load_tokenizer",
    "merged_state_dict",
    "position_ids_from_mask",
    "reference_model",
    "resolve_dtype",
    "resolve_model_path",
    "save_policy",
    "value_adapter_parameters",
]
