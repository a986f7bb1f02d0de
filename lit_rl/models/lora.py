"""LoRA adapters (peft) on a causal LM, and merging them into plain weights."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, config: LoraConfig) -> PeftModel:
    """Wrap ``model`` with trainable LoRA adapters; the base weights are frozen."""
    config.task_type = config.task_type or "CAUSAL_LM"
    check_lora_targets(model, config)
    return get_peft_model(model, config)


def check_lora_targets(model: nn.Module, config: LoraConfig) -> None:
    """Refuse a list of target module names of which any matches no module (peft trains the
    ones that match and says nothing of the others), naming the model's linear layers."""
    targets = config.target_modules
    if targets is None or isinstance(targets, str):  # "all-linear" or a regex: peft's own
        return
    names = [name for name, _ in model.named_modules()]
    unmatched = sorted(t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names))
    if unmatched:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"LoRA target_modules {unmatched} match no module of the model; its linear layers "
            f"are {linear}: target those names, or all-linear"
        )


def lora_layers(model: PeftModel) -> list[LoraLayer]:
    return [module for module in model.modules() if isinstance(module, LoraLayer)]


@torch.no_grad()
def merged_state_dict(
    model: PeftModel, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The base model's state dict with every active adapter's delta ``scaling * B A`` added,
    in plain names (``...q_proj.weight``), from ``state``: the PeftModel's full state dict
    (gathered from the shards under FSDP2), or its own ``state_dict()`` when ``None``.

    Unlike ``merge_and_unload`` this leaves ``model`` untouched (training goes on), at the
    cost of one copy of the weights. Floating-point tensors come out in at least float32: a
    LoRA delta is far smaller than the bf16 rounding step of the weight it is added to, so
    merging in bf16 would throw most of the training away.
    """
    state = model.state_dict() if state is None else state
    prefix = "base_model.model."
    merged = {}
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = f"{prefix}{name}"
        weight = _at_least_float32(state[f"{key}.base_layer.weight"])
        for adapter in module.active_adapters:
            if not isinstance(module, LoraLinear) or module.use_dora.get(adapter, False):
                raise ValueError(
                    f"cannot merge adapter '{adapter}' of {name} ({type(module).__name__}"
                    f"{', DoRA' if module.use_dora.get(adapter, False) else ''}): only plain "
                    "LoRA on linear layers merges; save the adapter alone instead"
                )
            a = state[f"{key}.lora_A.{adapter}.weight"].to(weight.dtype)
            b = state[f"{key}.lora_B.{adapter}.weight"].to(weight.dtype)
            delta = (b @ a) * module.scaling[adapter]
            weight = weight + (delta.T if module.fan_in_fan_out else delta)
        merged[f"{key}.base_layer.weight"] = weight
    plain: dict[str, torch.Tensor] = {}
    cast: dict[int, torch.Tensor] = {}  # by tensor: tied weights (embeddings) stay one tensor
    for key, value in state.items():
        if ".lora_" in key:
            continue
        plain_key = key.removeprefix(prefix).replace(".base_layer.", ".")
        if key in merged:
            plain[plain_key] = merged[key]
        else:
            plain[plain_key] = cast.setdefault(id(value), _at_least_float32(value))
    return plain


def base_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's own weights, without the adapters, in plain names (``...q_proj.weight``),
    as they are (no copy): what an engine serving the adapter alone must hold beneath it
    (``ReferenceSyncCallback`` merges part of the adapters into them)."""
    prefix = "base_model.model."
    return {
        key.removeprefix(prefix).replace(".base_layer.", "."): value
        for key, value in model.state_dict().items()
        if ".lora_" not in key
    }


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    return tensor.detach().to(torch.promote_types(tensor.dtype, torch.float32))
