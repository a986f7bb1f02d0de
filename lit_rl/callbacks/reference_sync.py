"""ReferenceSyncCallback: move pi_ref towards the policy every k steps (TR-DPO, Gorbatovski et
al., 2024: ``ref <- alpha * policy + (1 - alpha) * ref``)."""

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.experience import PolicyOwner, require_members
from lit_rl.models import PolicyModels
from lit_rl.models.lora import lora_layers
from lit_rl.state import require_keys
from lit_rl.strategies import FSDP2Strategy


class ReferenceSyncCallback(Callback):
    """Every ``ref_sync_steps`` optimizer steps, mix the policy into the reference.

    - Frozen-copy reference (full fine-tuning): its weights are lerped towards the policy's.
    - LoRA (reference = base weights with adapters off): ``alpha`` of every adapter's delta
      ``B A`` is merged into the base weights and ``B`` is scaled by ``1 - alpha``. The policy
      (base + adapter) is unchanged, the reference becomes the mix, and no second copy of the
      model exists. The adapters' optimizer state is reset, as for a fresh adapter. This needs
      float32 base weights: added into bf16 weights, ``alpha * B A`` is partly rounded away while
      ``B`` still shrinks, so the policy itself would change at every sync; other dtypes are
      refused when training starts.

    Args:
        ref_sync_steps: optimizer steps between syncs (TRL's ``ref_model_sync_steps``).
        ref_sync_mixup_alpha: alpha; 1.0 makes the reference equal to the policy.
    """

    def __init__(self, ref_sync_steps: int = 64, ref_sync_mixup_alpha: float = 0.6) -> None:
        if ref_sync_steps < 1:
            raise ValueError(f"ref_sync_steps must be >= 1, got {ref_sync_steps}")
        if not 0 < ref_sync_mixup_alpha <= 1:
            raise ValueError(f"ref_sync_mixup_alpha must be in (0, 1], got {ref_sync_mixup_alpha}")
        self.ref_sync_steps = ref_sync_steps
        self.alpha = ref_sync_mixup_alpha
        self.last_sync_step = 0  # in checkpoints, so a resumed run keeps the schedule

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_members(pl_module, PolicyOwner, "ReferenceSyncCallback")
        if isinstance(trainer.strategy, FSDP2Strategy):
            raise ValueError(
                "ReferenceSyncCallback cannot run under FSDP2Strategy yet: it mixes the policy "
                "into the reference in place, weight by weight, and sharded weights would need "
                "gathering; run it with DDPStrategy or one process, or remove the callback"
            )
        if not pl_module.model_recipe.reference:
            raise ValueError(
                "ReferenceSyncCallback on a module without a reference (beta = 0 or kl_coef = "
                "0): there is nothing to sync; remove the callback or enable the KL term"
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After configure_model: the weights and their dtype exist now.
        if pl_module.models.reference is None:
            self._check_lora_base_precision(pl_module.models)

    @staticmethod
    def _check_lora_base_precision(models: PolicyModels) -> None:
        dtypes = {layer.get_base_layer().weight.dtype for layer in lora_layers(models.policy)}
        if dtypes - {torch.float32}:
            raise ValueError(
                "ReferenceSyncCallback with LoRA merges alpha x each adapter's delta into the "
                f"base weights, which are {sorted(str(d) for d in dtypes)}: in bf16/fp16 the "
                "rounding discards part of the delta (most of a small one) and the policy "
                "itself changes at every sync. Set the module's dtype to float32, or train "
                "without the callback"
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step - self.last_sync_step >= self.ref_sync_steps:
            self.sync(pl_module.models, trainer.optimizers)
            self.last_sync_step = step

    @torch.no_grad()
    def sync(self, models: PolicyModels, optimizers: list[torch.optim.Optimizer] = ()) -> None:
        """Mix ``alpha`` of the policy into the reference of ``models``; the adapters' state
        in ``optimizers`` is reset (LoRA)."""
        if models.reference is not None:
            for ref, param in zip(
                models.reference.parameters(), models.policy.parameters(), strict=True
            ):
                ref.lerp_(param.to(ref.dtype), self.alpha)
            return
        self._check_lora_base_precision(models)
        adapter_params = []
        for layer in lora_layers(models.policy):
            for adapter in layer.active_adapters:
                base = layer.get_base_layer().weight
                base += self.alpha * layer.get_delta_weight(adapter).to(base.dtype)
                layer.lora_B[adapter].weight.mul_(1 - self.alpha)
                adapter_params += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
        for optimizer in optimizers:
            for param in adapter_params:
                optimizer.state.pop(param, None)

    def state_dict(self) -> dict[str, Any]:
        return {"last_sync_step": self.last_sync_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        require_keys(state_dict, ["last_sync_step"], "ReferenceSyncCallback")
        self.last_sync_step = state_dict["last_sync_step"]
