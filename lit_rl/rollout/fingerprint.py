"""Fingerprints of weights that engines can read from their own storage, whatever its layout.

An engine is checked by reading the weights it samples with (vLLM's adapter slots, the packed
decoder's copy), not the policy it was handed: a check that reads the policy cannot fail. Each
engine keeps the weights in its own layout (q, k and v fused; ranks padded; LoRA scalings
folded into B), so the fingerprint is a function of what the weights compute, or of their
entries as a multiset, which no fusing, padding or folding changes:

- ``adapter_fingerprint``: for every LoRA projection, ``v = s B (A u)`` with a fixed probe
  vector ``u`` per input width; the sum of ``|v|`` and ``v^2`` over every projection. A fused
  layer's ``v`` is its projections' ``v`` side by side, so it gives the same number.
- ``dense_fingerprint``: the sum of ``|x|`` and ``x^2`` over every entry of the tensors.

Both in float64. The engines hold the very float32 entries the trainer computes (a scaling is
folded into B by the same float32 product), so the numbers agree to float64 summation order
(~1e-15 relative, checked at 1e-12); a full fine-tuning step that barely moves the embedding
and norms still moves the fingerprint by ~1e-7 relative.
"""

from collections.abc import Iterable
from functools import cache

import torch
from peft import PeftModel
from torch import nn

from lit_rl.models.lora import lora_layers

FINGERPRINT_RTOL = 1e-12  # engines and the trainer agree on a version's fingerprint to this


@cache
def _probe(width: int) -> torch.Tensor:  # [width] float64, the same in every process
    return torch.randn(width, generator=torch.Generator().manual_seed(width), dtype=torch.float64)


@torch.no_grad()
def adapter_fingerprint(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``pairs``: each LoRA projection's ``(A [r, in], s B [out, r])`` (zero-padded ranks and
    stacked outputs allowed)."""
    total = torch.zeros((), dtype=torch.float64)
    for a, b in pairs:
        v = b.double() @ (a.double() @ _probe(a.shape[1]).to(a.device))
        total = total + (v.abs().sum() + v.square().sum()).cpu()
    return float(total)


@torch.no_grad()
def dense_fingerprint(tensors: Iterable[torch.Tensor]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for tensor in tensors:
        x = tensor.detach()
        total = (
            total + (x.abs().sum(dtype=torch.float64) + x.square().sum(dtype=torch.float64)).cpu()
        )
    return float(total)


def policy_adapters(policy: PeftModel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The policy's active LoRA projections as ``(A, s B)``."""
    return [
        (layer.lora_A[name].weight, layer.lora_B[name].weight * layer.scaling[name])
        for layer in lora_layers(policy)
        for name in layer.active_adapters
        if name in layer.lora_A
    ]


def dense_weights(model: nn.Module) -> list[torch.Tensor]:
    """What every engine keeps readable of a model's own weights: the input embedding and the
    norm weights (vLLM's CPU backend repacks the linear ones out of reach). Full fine-tuning
    moves each of them at every step."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    norms = [p for n, p in base.named_parameters() if p.ndim == 1 and "norm" in n]
    return [base.get_input_embeddings().weight, *norms]


def policy_fingerprint(policy: nn.Module, adapters: bool | None = None) -> float:
    """The fingerprint an engine holding ``policy``'s weights must read: of its adapters
    (``adapters``; default: under LoRA), else of its ``dense_weights``."""
    if adapters is None:
        adapters = isinstance(policy, PeftModel)
    if adapters:
        return adapter_fingerprint(policy_adapters(policy))
    return dense_fingerprint(dense_weights(policy))
