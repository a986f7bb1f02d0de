"""FSDP2 for lit_rl's models through Lightning's ``ModelParallelStrategy``.

``FSDP2Strategy`` is ``ModelParallelStrategy`` with one parallel plan: ``fully_shard`` on every
decoder layer, then on each model's root (PyTorch's FSDP2; torchtitan's plan for decoders),
over all processes; frozen base weights and trainable adapters are sharded alike and only
the trainable ones reach the optimizer. Each process gets its own prompts (the distributed
sampler spans all processes); gradients are reduce-scattered in every backward pass.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from transformers import GradientCheckpointingLayer

from lit_rl.atomic import replace_folder, staging_path
from lit_rl.models import DType, PolicyModels, fast_bf16

MixedPrecision = Literal["auto", "bf16", "none"]


class FSDP2Strategy(ModelParallelStrategy):
    """Shards the policy, its frozen reference and its critic with FSDP2 across every process
    (``trainer.devices`` x ``trainer.num_nodes``); on several nodes each node holds one copy,
    sharded across its devices, and nodes replicate it (HSDP).

    Checkpoints are torch distributed checkpoints (a folder of shards), loadable at another
    number of processes; a full single-file checkpoint also loads into it.

    Args:
        mixed_precision: ``bf16``: layers compute with bf16 copies of the weights gathered for
            each layer, gradients reduced in float32, the sharded weights and the optimizer
            in their own dtype (``MixedPrecisionPolicy(param_dtype=bfloat16,
            reduce_dtype=float32)``); ``none``: compute in the weights' dtype; ``auto``: bf16
            where the hardware computes it fast (CUDA with bf16, CPUs with AMX or
            avx512_bf16), else none.
        save_distributed_checkpoint: ``True``: each process writes its shards (a folder);
            ``False``: rank 0 writes one full file.
        process_group_backend: ``None`` = NCCL on GPUs, gloo on CPUs.
        timeout: of collective operations.
    """

    def __init__(
        self,
        mixed_precision: MixedPrecision = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        if mixed_precision not in ("auto", "bf16", "none"):
            raise ValueError(
                f"mixed_precision must be 'auto', 'bf16' or 'none', got {mixed_precision!r}"
            )
        self.mixed_precision = mixed_precision
        self.save_distributed = save_distributed_checkpoint
        self.shard_mesh: DeviceMesh | None = None

    def setup_environment(self) -> None:
        super().setup_environment()
        # ModelParallelStrategy's own mesh splits a node's devices into tensor parallelism,
        # which lit_rl does not use: shard over every device of a node, replicate over nodes.
        device = self.root_device.type
        if self.num_nodes == 1:
            self.shard_mesh = init_device_mesh(device, (self.num_processes,))
        else:
            self.shard_mesh = init_device_mesh(
                device, (self.num_nodes, self.num_processes), mesh_dim_names=("replicate", "shard")
            )

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write the checkpoint atomically: a folder of shards is written under a staging name
        by every process, then renamed over ``filepath`` by rank 0 (a single file goes through
        the checkpoint IO, ``AtomicCheckpointIO`` with ``PolicyCheckpoint``)."""
        if not self.save_distributed:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        destination = Path(self.broadcast(str(filepath)))
        staging = staging_path(destination)
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier("lit_rl.checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("lit_rl.checkpoint_written")  # every process's shards are on disk
        if self.is_global_zero:
            replace_folder(staging, destination)
        self.barrier("lit_rl.checkpoint_replaced")

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every process is a data-parallel rank: each draws its own prompts.
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def computes_in_bf16(self) -> bool:
        return self.mixed_precision == "bf16" or (
            self.mixed_precision == "auto" and fast_bf16(self.root_device.type)
        )

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        if not self.computes_in_bf16:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

    def weights_dtype(self, requested: DType) -> DType:
        """The dtype the sharded weights are kept in for a module that asked ``requested``.

        With bf16 mixed precision the shards stay float32 (``auto``): every layer computes with
        bf16 copies anyway, and one shard group cannot mix bf16 base weights with float32
        LoRA adapters (FSDP2 would reduce the adapters' gradients in the group's dtype).
        """
        if not self.computes_in_bf16 or requested in ("auto", "float32"):
            return "float32" if self.computes_in_bf16 else requested
        raise ValueError(
            f"dtype={requested} with FSDP2Strategy(mixed_precision={self.mixed_precision!r}) "
            "would put low-precision weights and float32 adapters in one shard group: use "
            "dtype auto or float32 (FSDP2 computes in bf16 already), or mixed_precision none"
        )

    def parallelize(self, models: PolicyModels) -> None:
        """Shard ``models`` in place (call from ``configure_model``)."""
        if self.shard_mesh is None:
            raise RuntimeError("FSDP2Strategy.parallelize runs after the processes have started")
        shard_policy_models(models, self.shard_mesh, self.mixed_precision_policy())


def shard_policy_models(
    models: PolicyModels, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy
) -> None:
    """``fully_shard`` every decoder layer of each model, then each model's root.

    A root holds what its layers do not (embeddings, the final norm, an untied output head) and
    is what the trainer calls, so every forward gathers layer by layer. The value head of an
    adapter critic is sharded on its own: it is called outside the policy's root. ``generate``
    counts as a forward of the root: transformers' (and peft's) ``generate`` calls the inner
    model, so without it the first layer would initialise itself as FSDP's root and the
    trainer's first forward then fail ("FSDP requires running forward through the root").
    """
    for model in (models.policy, models.reference, models.value_model):
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):  # transformers' decoder layers
                fully_shard(module, mesh=mesh, mp_policy=mp_policy)
        fully_shard(model, mesh=mesh, mp_policy=mp_policy)
        if hasattr(model, "generate"):  # a value model has none
            register_fsdp_forward_method(model, "generate")
    if models.value_head is not None:
        fully_shard(models.value_head, mesh=mesh, mp_policy=mp_policy)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in module.modules())


@contextmanager
def gathered_weights(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with its full weights in place, gathered once: for generation, where a
    sharded model would gather every layer again for every token.

    Without sharding it yields ``module`` as it is. Under FSDP2 each shard unit is gathered
    (in the mixed-precision compute dtype, as the trainer's forward sees it), kept gathered
    through any number of forward passes, and resharded on exit.
    """
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield module
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict of ``module`` on CPU, in the weights' own dtype.

    A collective under sharding: every process must call it; rank 0 receives the tensors,
    the others an empty dict. Without sharding, every process gets it.
    """
    if not is_sharded(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module, options=options)
    # Tied parameters (input and output embeddings) arrive as separate copies; one tensor
    # again, as in the module, so that save_pretrained writes it once.
    first_name: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        original = first_name.setdefault(id(param), name)
        if original != name and name in state and original in state:
            state[name] = state[original]
    return state
