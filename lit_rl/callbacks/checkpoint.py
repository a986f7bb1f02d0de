"""PolicyCheckpoint: Lightning checkpoints plus a plain-transformers copy of the policy."""

import shutil
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rl.models import save_policy


class PolicyCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that also writes the policy beside every checkpoint
    (``<name>.ckpt`` -> ``<name>.policy/``) and at the end of training (``<dirpath>/policy``):
    merged weights and tokenizer that ``AutoModelForCausalLM.from_pretrained`` loads alone.

    Accepts every ``ModelCheckpoint`` argument. With ``save_last``, ``last.ckpt`` is also
    written when training ends between saving intervals (e.g. stopped by ``max_time``). The
    export rides on ModelCheckpoint's ``_save_checkpoint``/``_remove_checkpoint``: no public
    hook receives the checkpoint's path.
    """

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            self._export(trainer.lightning_module, Path(filepath).with_suffix(".policy"))

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            shutil.rmtree(Path(filepath).with_suffix(".policy"), ignore_errors=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.dirpath is None:
            return
        # A run stopped by max_time (or max_steps between saving intervals) would otherwise
        # lose its last steps: write last.ckpt at the step training actually ended.
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero:
            self._export(pl_module, Path(self.dirpath) / "policy")

    @staticmethod
    def _export(pl_module: LightningModule, directory: Path) -> None:
        save_policy(pl_module.policy, pl_module.tokenizer, directory)
