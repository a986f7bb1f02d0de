"""LoRA adapters (peft) on a causal LM, and merging them into plain weights."""

from enum import Enum
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, config: LoraConfig) -> PeftModel:
    """Wrap ``model`` with trainable LoRA adapters; the base weights are frozen."""
    config.task_type = config.task_type or "CAUSAL_LM"
    return get_peft_model(model, config)


def lora_config_dict(config: LoraConfig) -> dict[str, Any]:
    """``config`` in plain types (no enums or sets), so a checkpoint's hyperparameters load
    with ``torch.load(weights_only=True)``; ``LoraConfig(**d)`` rebuilds it."""
    plain = {}
    for key, value in config.to_dict().items():
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, set):
            value = sorted(value)
        plain[key] = value
    return plain


def lora_layers(model: PeftModel) -> list[LoraLayer]:
    return [module for module in model.modules() if isinstance(module, LoraLayer)]


@torch.no_grad()
def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict with every active adapter's delta added, in plain names.

    Unlike ``merge_and_unload`` this leaves ``model`` untouched (training goes on), at the
    cost of one copy of the weights. Floating-point tensors come out in at least float32: a
    LoRA delta is far smaller than the bf16 rounding step of the weight it is added to, so
    merging in bf16 would throw most of the training away.
    """
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = _at_least_float32(module.get_base_layer().weight)
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            deltas[f"{name}.base_layer.weight"] = weight + delta.to(weight.dtype)
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = deltas.get(key, _at_least_float32(value))
    return state


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    return tensor.detach().to(torch.promote_types(tensor.dtype, torch.float32))
