"""PolicyCheckpoint: Lightning checkpoints, a last one where training stopped, and the final
policy exported for plain transformers."""

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rl.models import save_policy
from lit_rl.modules import PolicyModule
from lit_rl.strategies import full_state_dict, is_sharded


class PolicyCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that, when training ends, writes ``last.ckpt`` at the step it
    ended on (with ``save_last``; e.g. stopped by ``max_time`` between saving intervals) and
    exports the policy to ``<dirpath>/policy``: merged weights and tokenizer that
    ``AutoModelForCausalLM.from_pretrained`` loads alone, and under LoRA the adapter alone in
    ``<dirpath>/policy/adapter``.

    Accepts every ``ModelCheckpoint`` argument. Under FSDP2 the export gathers the shards
    (every process takes part) and rank 0 writes it; checkpoints are the strategy's own
    (torch distributed checkpoint folders).
    """

    def __init__(self, *args, every_n_train_steps: int | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_n_train_steps = every_n_train_steps

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not isinstance(pl_module, PolicyModule):
            raise TypeError(
                "PolicyCheckpoint exports a lit_rl PolicyModule's policy, got "
                f"{type(pl_module).__name__}: use lightning's ModelCheckpoint for other modules"
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Replaces ModelCheckpoint's own, which writes last.ckpt only if none was written yet.
        if self.dirpath is None:
            return
        step = trainer.global_step
        on_interval = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        if self.save_last and step > 0 and not on_interval:
            last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(last)
        export_policy(trainer, pl_module, Path(self.dirpath) / "policy")


def export_policy(trainer: Trainer, pl_module: PolicyModule, directory: Path) -> None:
    """Write the policy for plain transformers to ``directory``; a collective when sharded."""
    # Sharded: every process takes part in gathering, rank 0 keeps the tensors. Otherwise
    # save_policy reads the policy's own state dict (no copy).
    state = full_state_dict(pl_module.policy) if is_sharded(pl_module.policy) else None
    if trainer.is_global_zero:
        save_policy(pl_module.policy, pl_module.tokenizer, directory, state)
    trainer.strategy.barrier("lit_rl.export_policy")
