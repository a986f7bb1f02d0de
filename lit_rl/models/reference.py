"""The reference policy pi_ref: the LoRA policy with adapters off, or a frozen copy."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no gradients: the reference for full fine-tuning."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


@contextmanager
def reference_model(policy: nn.Module, frozen: nn.Module | None) -> Iterator[nn.Module]:
    """Yield the module that computes pi_ref.

    With LoRA (``policy`` is a ``PeftModel`` and no frozen copy is kept) the reference is the
    same weights with the adapters disabled: no second copy of the model in memory.
    """
    if frozen is not None:
        yield frozen
    elif isinstance(policy, PeftModel):
        trainable = [p for p in policy.parameters() if p.requires_grad]
        try:
            with policy.disable_adapter():
                # peft freezes the adapters it disables (and, re-enabling, every adapter but
                # the active one). Keep the trainable set as it was: FSDP2 reads it to choose
                # the dtype it reduces gradients in, and a critic's adapter trains on.
                for param in trainable:
                    param.requires_grad_(True)
                yield policy
        finally:
            for param in trainable:
                param.requires_grad_(True)
    else:
        raise ValueError("a policy without LoRA needs a frozen reference copy (frozen_copy)")
