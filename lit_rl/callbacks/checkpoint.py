"""PolicyCheckpoint: Lightning checkpoints written atomically, a last one where training
stopped (also when a stop signal ended it), and the final policy exported for plain
transformers."""

import logging
import signal
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_rl.atomic import remove_stale_staging
from lit_rl.callbacks.preemption import Preempted, StopSignals
from lit_rl.experience import PolicyOwner, require_members
from lit_rl.models import save_policy
from lit_rl.strategies import AtomicCheckpointIO, full_state_dict, is_sharded

log = logging.getLogger(__name__)


class PolicyCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` for RL runs that can be killed or preempted at any moment.

    - Every checkpoint is written atomically next to its destination (``AtomicCheckpointIO``
      for single files, staged folders under ``FSDP2Strategy``): a kill during a write leaves
      the previous checkpoint loadable; what killed writes left is removed at the next start.
    - SIGTERM (a scheduler's preemption) or SIGINT (Ctrl+C): the current step finishes,
      ``last.ckpt`` is written at it, and the process exits with status 143 (130 for SIGINT);
      the same command with ``--ckpt_path last`` continues the run.
    - When training ends, ``last.ckpt`` is written at the step it ended on (with
      ``save_last``; e.g. stopped by ``max_time`` between intervals) and the policy is exported
      to ``<dirpath>/policy``: merged weights and tokenizer that
      ``AutoModelForCausalLM.from_pretrained`` loads alone, and under LoRA the adapter alone in
      ``<dirpath>/policy/adapter``. A preempted run exports at its real end.

    Accepts every ``ModelCheckpoint`` argument. Under FSDP2 the export gathers the shards
    (every process takes part) and rank 0 writes it; checkpoints are the strategy's own
    (torch distributed checkpoint folders).

    Args:
        keep_last: keep only the newest ``keep_last`` interval checkpoints (``None``: as
            ``save_top_k`` says; by default only the newest).
    """

    def __init__(
        self,
        *args: Any,  # noqa: ANN401 (ModelCheckpoint's)
        every_n_train_steps: int | None = None,
        keep_last: int | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        if keep_last is not None:
            if keep_last < 1:
                raise ValueError(f"keep_last must be >= 1, got {keep_last}")
            # Lightning's idiom for "the newest k": rank checkpoints by their step.
            kwargs |= {"monitor": "step", "mode": "max", "save_top_k": keep_last}
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_n_train_steps = every_n_train_steps
        self.stop_signals = StopSignals()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        hint = ": use lightning's ModelCheckpoint for other modules"
        require_members(pl_module, PolicyOwner, "PolicyCheckpoint", hint)
        # Lightning's default writer (a user's own CheckpointIO is kept as it is).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and self.dirpath is not None:
            for name in remove_stale_staging(Path(self.dirpath)):
                log.warning("removed %s, left in %s by a killed write", name, self.dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_signals.install()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        signum = self.stop_signals.received_by_any(trainer)
        if signum is None:
            return
        path = self._write_last(trainer)
        self.stop_signals.restore()
        where = (
            f"continue with the same command and --ckpt_path last (or --ckpt_path {path})"
            if path
            else "no optimizer step was taken, so no checkpoint was written"
        )
        if trainer.is_global_zero:
            name = signal.Signals(signum).name
            step = trainer.global_step
            print(f"lit-rl: {name}: stopped after optimizer step {step}; {where}", file=sys.stderr)
        raise Preempted(signum)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Replaces ModelCheckpoint's own, which writes last.ckpt only if none was written yet.
        self.stop_signals.restore()
        if self.dirpath is None:
            return
        if self.save_last:
            self._write_last(trainer)
        export_policy(trainer, pl_module, Path(self.dirpath) / "policy")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.stop_signals.restore()  # also after an exception

    def _write_last(self, trainer: Trainer) -> Path | None:
        """``last.ckpt`` at this step (``None`` before the first step): written here unless
        the interval save wrote it at this step. Decided from the step alone, never from the
        filesystem, so every process agrees (writing is a collective under FSDP2)."""
        if trainer.global_step == 0:
            return None
        last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        step = trainer.global_step
        on_interval = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        if not (on_interval and self.save_last):
            trainer.save_checkpoint(last)
        return last


def export_policy(trainer: Trainer, pl_module: PolicyOwner, directory: Path) -> None:
    """Write the policy for plain transformers to ``directory``; a collective when sharded."""
    policy = pl_module.models.policy
    # Sharded: every process takes part in gathering, rank 0 keeps the tensors. Otherwise
    # save_policy reads the policy's own state dict (no copy).
    state = full_state_dict(policy) if is_sharded(policy) else None
    if trainer.is_global_zero:
        save_policy(policy, pl_module.tokenizer, directory, state)
    trainer.strategy.barrier("lit_rl.export_policy")
