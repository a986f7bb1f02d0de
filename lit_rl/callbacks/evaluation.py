"""EvaluationCallback: a last validation when training ends, and the evaluation table."""

import shlex
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class EvaluationCallback(Callback):
    """The held-out evaluation (the module's ``validation_step``: greedy accuracy, pass@1,
    pass@n, maj@n on the run's engine; ``lit_rl.evaluation``) runs every
    ``trainer.val_check_interval`` training batches. This callback adds one when training
    stops (``max_steps`` reached: it asks the Trainer to stop at that step, and Lightning
    validates a run that is asked to stop; ``max_time`` runs stop the same way), and prints the
    table of the last evaluation at the end of ``fit`` and after ``lit-rl validate``.

    Args:
        at_end: validate once more when training reaches ``max_steps``.
        short_runs: ``"skip"``: not for a run whose ``max_steps`` is below
            ``val_check_interval`` (a smoke run, which would never have evaluated on its own:
            the full table costs minutes on a CPU); the command that evaluates its checkpoint
            is printed instead. ``"evaluate"``: every run.
    """

    def __init__(
        self, at_end: bool = True, short_runs: Literal["evaluate", "skip"] = "evaluate"
    ) -> None:
        self.at_end = at_end
        self.short_runs = short_runs
        self.table: dict[str, float] = {}
        self.checkpoint_step = 0  # the optimizer steps of the checkpoint ``validate`` loaded

    def is_short(self, trainer: Trainer) -> bool:
        """A run that ``short_runs="skip"`` leaves unevaluated at its end."""
        interval = trainer.val_check_interval
        return (
            self.short_runs == "skip"
            and isinstance(interval, int)
            and 0 < trainer.max_steps < interval
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.at_end and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            # Lightning validates a run asked to stop, not one that ran out of steps.
            trainer.should_stop = not self.is_short(trainer)

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # validate restores no loop (its trainer.global_step stays 0): the table's title
        # reads the checkpoint's own count.
        self.checkpoint_step = int(checkpoint.get("global_step", 0))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.table = {
            name.removeprefix("val/"): float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/")
        }
        if trainer.state.fn == "validate":
            title = f"lit_rl evaluation ({self.checkpoint_step} optimizer steps)"
            rank_zero_info(evaluation_table(self.table, title))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_end and self.is_short(trainer) and trainer.global_step == trainer.max_steps:
            rank_zero_info(self.how_to_evaluate(trainer))
        elif self.table:
            title = f"lit_rl evaluation after {trainer.global_step} optimizer steps"
            rank_zero_info(evaluation_table(self.table, title))

    def how_to_evaluate(self, trainer: Trainer) -> str:
        steps, interval = trainer.max_steps, trainer.val_check_interval
        text = (
            f"lit_rl: no held-out evaluation after this {steps}-step run (max_steps below "
            f"val_check_interval={interval}: a smoke run)"
        )
        checkpoint = trainer.checkpoint_callback
        config = Path(trainer.log_dir or "") / "config.yaml"
        if checkpoint is None or checkpoint.dirpath is None or not config.is_file():
            return text + "; evaluate its policy with lit-rl validate"
        last = Path(checkpoint.dirpath) / "last.ckpt"
        command = ["lit-rl", "validate", "--config", str(config), "--ckpt_path", str(last)]
        return f"{text}; evaluate it with:\n  {shlex.join(command)}"


def evaluation_table(metrics: dict[str, float], title: str) -> str:
    """``metrics`` as a two-column text table, in their order."""
    width = max((len(name) for name in metrics), default=0)
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{name:<{width}}  {value:>10.4f}" for name, value in metrics.items()]
    return "\n".join(lines)
