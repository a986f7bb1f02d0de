"""Gradient clipping that is correct on sharded parameters."""

import torch
from torch import nn
from torch.distributed.tensor import DTensor


@torch.no_grad()
def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``parameters`` so their global L2 norm is at most ``max_norm``;
    return the norm before clipping, a plain scalar tensor on every process.

    Under FSDP2 each process holds shards of the gradients (DTensors): the norm of the local
    shards is only part of the total, and ``full_tensor()`` all-reduces it to the norm of the
    whole gradient. Under DDP the gradients are already averaged, full and equal everywhere.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total
