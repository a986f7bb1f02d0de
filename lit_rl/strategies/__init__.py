"""Scale-out through Lightning's own strategies: FSDP2 (``FSDP2Strategy``, a
``ModelParallelStrategy`` with lit_rl's parallel plan) or ``lightning.pytorch.strategies.
DDPStrategy``; both on ``torchrun`` or SLURM (docs/scaling.md)."""

from lit_rl.strategies.atomic_checkpoint import AtomicCheckpointIO, check_checkpoint_file
from lit_rl.strategies.build import build_policy_models
from lit_rl.strategies.checkpoint import (
    name_optimizer_states,
    number_optimizer_states,
    optimizer_state_by_name,
    optimizer_state_by_position,
    parameter_names,
)
from lit_rl.strategies.fsdp2 import (
    FSDP2Strategy,
    full_state_dict,
    gathered_weights,
    is_sharded,
    shard_policy_models,
)
from lit_rl.strategies.gradients import clip_grad_norm_

__all__ = [
    "AtomicCheckpointIO",
    "FSDP2Strategy",
    "build_policy_models",
    "check_checkpoint_file",
    "clip_grad_norm_",
    "full_state_dict",
    "gathered_weights",
    "is_sharded",
    "name_optimizer_states",
    "number_optimizer_states",
    "optimizer_state_by_name",
    "optimizer_state_by_position",
    "parameter_names",
    "shard_policy_models",
]
