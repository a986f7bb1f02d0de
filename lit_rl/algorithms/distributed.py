"""Sums over processes for statistics an algorithm defines over the whole batch."""

import torch
import torch.distributed as dist


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every process, in place; unchanged when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def global_mean(values: torch.Tensor) -> torch.Tensor:  # [n] -> []
    """The mean of ``values`` of every process together (one process: ``values.mean()``)."""
    count, total = all_reduce_sum(torch.stack([values.new_tensor(len(values)), values.sum()]))
    return total / count


def global_std(values: torch.Tensor) -> torch.Tensor:  # [n] -> []
    """The sample std of ``values`` of every process together (one process: ``values.std()``)."""
    mean = global_mean(values)
    count = all_reduce_sum(values.new_tensor(len(values)))
    return (all_reduce_sum(((values - mean) ** 2).sum()) / (count - 1)).sqrt()


def global_max(values: torch.Tensor) -> torch.Tensor:  # [n] -> []
    """The largest of ``values`` of every process (0 where no process has any)."""
    local = values.max() if len(values) else values.new_zeros(())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(local, op=dist.ReduceOp.MAX)
    return local
