"""SampleLoggerCallback: a TensorBoard text panel of prompts, completions and rewards."""

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_rl.algorithms import masked_mean
from lit_rl.experience import ExperienceModule, require_members


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


class SampleLoggerCallback(Callback):
    """Every ``every_n_steps`` rollout batches, log one prompt's group of completions as a table
    under ``rollout/samples`` (TensorBoard's Text tab); a multi-turn episode shows whole, the
    tokens the environment wrote between ``⟦`` and ``⟧``.

    Args:
        every_n_steps: training batches (rollouts) between panels.
        max_completions: rows per panel.
    """

    def __init__(self, every_n_steps: int = 10, max_completions: int = 8) -> None:
        if every_n_steps < 1 or max_completions < 1:
            raise ValueError(
                f"every_n_steps and max_completions must be >= 1, got "
                f"{every_n_steps}, {max_completions}"
            )
        self.every_n_steps = every_n_steps
        self.max_completions = max_completions

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_members(pl_module, ExperienceModule, "SampleLoggerCallback")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        trained = pl_module.handoff.trained  # None for a batch without an update
        if trained is None or batch_idx % self.every_n_steps:
            return
        experience = trained.experience
        rows = ["| reward | advantage | prompt | completion |", "|---|---|---|---|"]
        for i in range(min(self.max_completions, len(experience.completions))):
            advantage = masked_mean(experience.advantages[i], experience.completion_mask[i])
            rows.append(
                f"| {experience.rewards[i].item():.3f} | {advantage.item():+.3f} | "
                f"{_cell(experience.prompts[i])} | {_cell(experience.completions[i])} |"
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("rollout/samples", "\n".join(rows), trainer.global_step)
