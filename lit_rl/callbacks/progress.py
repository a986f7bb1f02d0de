"""StepProgressBar: progress in optimizer steps, the numbers an RL run is read by, and a
summary when the run ends."""

import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm

# Logged metric -> its short name on the bar (the modules log these with prog_bar=True).
SHORT_NAMES = {"rollout/reward": "reward", "train/kl": "kl", "train/step_time": "s/step"}


class StepProgressBar(ProgressBar):
    """A bar of optimizer steps (``step 12/1000 [02:14<3:04:01, reward=0.38, kl=0.002,
    s/step=10.7]``) instead of Lightning's epochs, which a step-based run does not have
    (``Epoch 0/-2``) and its logger's ``v_num``; evaluations get a bar of their own. When
    ``fit`` ends (after the last checkpoint and export): steps, time, each held-out greedy
    accuracy with its step, and where the policy was saved. Rank 0 alone prints.

    ``lit-rl`` puts it in place of Lightning's bar unless the recipe names a progress bar.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.bar: tqdm | None = None
        self.evaluation_bar: tqdm | None = None
        self.started = 0.0
        self.accuracies: list[tuple[int, float]] = []  # (optimizer step, greedy accuracy)

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        return {SHORT_NAMES.get(k, k): v for k, v in metrics.items() if k != "v_num"}

    def _shows(self, trainer: Trainer) -> bool:
        return self.enabled and trainer.is_global_zero

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.monotonic()
        if self._shows(trainer):
            total = trainer.max_steps if trainer.max_steps > 0 else None
            self.bar = tqdm(
                total=total, initial=trainer.global_step, desc="step", unit="step",
                file=sys.stderr, dynamic_ncols=True, smoothing=0,
            )  # fmt: skip

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.bar is None or trainer.global_step == self.bar.n:  # no step (dynamic sampling)
            return
        self.bar.update(trainer.global_step - self.bar.n)
        postfix = {
            k: f"{v:.3g}" if isinstance(v, float) else v
            for k, v in self.get_metrics(trainer, pl_module).items()
        }
        self.bar.set_postfix(postfix, refresh=True)
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self._close_bar()  # done: the lines after it start below it

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._shows(trainer) and not trainer.sanity_checking:
            total = sum(int(n) for n in trainer.num_val_batches)
            self.evaluation_bar = tqdm(
                total=total, desc="evaluating", unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True,
            )  # fmt: skip

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.evaluation_bar is not None:
            self.evaluation_bar.update(1)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.evaluation_bar is not None:
            self.evaluation_bar.close()
            self.evaluation_bar = None
        accuracy = trainer.callback_metrics.get("val/greedy_accuracy")
        if accuracy is not None and not trainer.sanity_checking:
            self.accuracies.append((trainer.global_step, float(accuracy)))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._shows(trainer):
            print(self.summary(trainer), file=sys.stderr)

    def summary(self, trainer: Trainer) -> str:
        seconds = time.monotonic() - self.started
        steps = trainer.global_step
        minutes, rest = divmod(round(seconds), 60)
        lines = [f"lit_rl: {steps} optimizer steps in {minutes}:{rest:02d}"]
        if self.accuracies:
            held_out = " -> ".join(f"{100 * a:.1f} % (step {s})" for s, a in self.accuracies)
            lines.append(f"  held-out greedy accuracy: {held_out}")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath is not None:
            policy = Path(checkpoint.dirpath) / "policy"
            if policy.is_dir():
                adapter = "; its LoRA adapter in adapter/" if (policy / "adapter").is_dir() else ""
                lines.append(f"  policy: {policy} (for transformers{adapter})")
            last = Path(checkpoint.dirpath) / "last.ckpt"
            if last.exists():
                lines.append(f"  checkpoint: {last} (continue with --ckpt_path last)")
        return "\n".join(lines)
