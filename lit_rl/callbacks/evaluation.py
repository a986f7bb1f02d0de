"""EvaluationCallback: a last validation when training ends, and the evaluation table."""

from typing import Any

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
    """

    def __init__(self, at_end: bool = True) -> None:
        self.at_end = at_end
        self.table: dict[str, float] = {}

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.at_end and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.table = {
            name.removeprefix("val/"): float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/")
        }
        if trainer.state.fn == "validate":
            title = f"lit_rl evaluation ({trainer.global_step} optimizer steps)"
            rank_zero_info(evaluation_table(self.table, title))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.table:
            title = f"lit_rl evaluation after {trainer.global_step} optimizer steps"
            rank_zero_info(evaluation_table(self.table, title))


def evaluation_table(metrics: dict[str, float], title: str) -> str:
    """``metrics`` as a two-column text table, in their order."""
    width = max((len(name) for name in metrics), default=0)
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{name:<{width}}  {value:>10.4f}" for name, value in metrics.items()]
    return "\n".join(lines)
