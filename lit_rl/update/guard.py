"""GuardedOptimizerStep: clip, then step, unless the gradient is NaN or infinite."""

import warnings
from typing import Any

import torch
import torch.distributed as dist

from lit_rl.strategies import clip_grad_norm_


class GuardedOptimizerStep:
    """An optimizer step that never takes a NaN/inf gradient: the gradients are clipped to
    ``max_grad_norm`` (their global norm, over every process and shard), and a step whose norm
    is not finite is skipped: weights, optimizer state and learning-rate schedule stay as they
    are (an optimizer step on it would poison them, and every checkpoint after it). Skips are
    counted, in all and in a row (both in checkpoints, through ``state_dict``, so a resumed run
    keeps its streak); ``max_nonfinite_steps`` in a row stop the run with an error naming the fixes.

    Args:
        max_grad_norm: clip the gradients' global norm to this; 0 = no clipping.
        max_nonfinite_steps: skipped steps in a row that stop the run.
    """

    def __init__(self, max_grad_norm: float = 1.0, max_nonfinite_steps: int = 3) -> None:
        if max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {max_grad_norm}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.max_grad_norm = max_grad_norm
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # skipped in all
        self.nonfinite_in_a_row = 0

    def __call__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> torch.Tensor:
        """Step ``optimizer`` and ``scheduler`` on the accumulated gradients, or skip; return
        the gradients' norm before clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = clip_grad_norm_(params, self.max_grad_norm)
        # The norm is global (reduced over processes), so every process skips alike.
        if not torch.isfinite(grad_norm):
            # The scheduler steps with every step taken: its count is the optimizer step's.
            self._skip(optimizer, grad_norm, step=scheduler.last_epoch)
            return grad_norm
        self.nonfinite_in_a_row = 0
        optimizer.step()
        scheduler.step()
        return grad_norm

    def _skip(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor, step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        limit = self.max_nonfinite_steps
        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            warnings.warn(
                f"skipped an optimizer step: the gradient norm is {float(grad_norm)} "
                f"({self.nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all; the run "
                f"stops at {limit} in a row)",
                stacklevel=3,
            )
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                f"{limit} optimizer steps in a row had a NaN/inf gradient (the last at "
                f"optimizer step {step}); the weights are those of the last good step and no "
                "checkpoint holds a poisoned one. Lower learning_rate, keep max_grad_norm > 0, "
                "train in float32 (dtype: float32) if bf16/fp16 overflows, or check the reward "
                "and the data for extreme values"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nonfinite_steps = state["nonfinite_steps"]
        # Checkpoints written before the streak was saved carry only the total.
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)


def refuse_loss_scaling(precision: str) -> None:
    """fp16 mixed precision scales the loss with a GradScaler, whose gradients this step would
    clip and apply unscaled: refuse it, naming what works."""
    if precision == "16-mixed":
        raise ValueError(
            "trainer.precision=16-mixed scales the loss with a GradScaler, which lit_rl's "
            "update (manual optimization, its own clipping) does not unscale: use "
            "precision 32-true with dtype auto/bfloat16, or FSDP2Strategy's mixed_precision"
        )
