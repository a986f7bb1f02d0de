"""AdamW with a linear learning-rate warm-up, as Lightning's ``configure_optimizers`` returns it."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class AdamWWithWarmup:
    """AdamW whose learning rate rises linearly over the first ``warmup_steps`` optimizer
    steps, then stays at ``learning_rate``.

    Args:
        learning_rate: the rate after warm-up (of every group without its own ``lr``).
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: optimizer steps of linear warm-up; 0 = none.
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def configure(self, parameter_groups: list[dict[str, Any]]) -> dict[str, Any]:
        """``configure_optimizers``' answer for ``parameter_groups``: the schedule steps every
        optimizer step."""
        optimizer = torch.optim.AdamW(
            parameter_groups, lr=self.learning_rate, weight_decay=self.weight_decay
        )
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
