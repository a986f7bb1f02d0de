"""The NaN/inf guard: an optimizer step with a non-finite gradient is skipped (weights,
optimizer state and learning-rate schedule untouched) and counted; k in a row stop the run
with an error that names the fixes, and no checkpoint holds a poisoned weight."""

import pytest
import torch

from lit_rl.experience import Experience
from lit_rl.modules import GRPOModule
from tests.conftest import fit_rollouts, tiny_module_args


class PoisonedGRPO(GRPOModule):
    """GRPO whose gradient is NaN at the optimizer steps in ``poisoned`` (by global step)."""

    def __init__(self, *args, poisoned: set[int] = frozenset(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poisoned = poisoned
        self.snapshots: list[dict[str, torch.Tensor]] = []  # trainable weights after each step

    def accumulate_gradients(self, micro: Experience, weight: float):
        stats, logprobs = super().accumulate_gradients(micro, weight)
        if self.trainer.global_step + self.nonfinite_steps in self.poisoned:
            first = next(p for p in self.policy.parameters() if p.requires_grad)
            first.grad[0, 0] = float("nan")
        return stats, logprobs

    def step_optimizer(self) -> torch.Tensor:
        grad_norm = super().step_optimizer()
        trainable = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
        self.snapshots.append(trainable)
        return grad_norm


def test_a_nonfinite_step_is_skipped_and_counted(tiny_model_dir):
    module = PoisonedGRPO(**tiny_module_args(tiny_model_dir), poisoned={1})
    trainer = fit_rollouts(module, tiny_model_dir, steps=3)
    # Optimizer calls: step 0, the poisoned one (skipped), then steps 1 and 2.
    assert trainer.global_step == 3 and module.nonfinite_steps == 1
    assert len(module.snapshots) == 4
    before, skipped = module.snapshots[0], module.snapshots[1]
    assert all(torch.equal(before[n], skipped[n]) for n in before)  # untouched
    assert all(torch.isfinite(p).all() for p in module.snapshots[-1].values())
    state = trainer.optimizers[0].state_dict()["state"]
    assert all(torch.isfinite(v["exp_avg"]).all() for v in state.values())
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule did not move
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 1.0


def test_k_nonfinite_steps_in_a_row_stop_the_run_with_the_fixes(tiny_model_dir):
    module = PoisonedGRPO(
        **tiny_module_args(tiny_model_dir), poisoned={1, 2, 3}, max_nonfinite_steps=3
    )
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row had a NaN/inf") as err:
        fit_rollouts(module, tiny_model_dir, steps=10)
    assert "Lower learning_rate" in str(err.value)
    assert module.nonfinite_in_a_row == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_max_nonfinite_steps_must_be_positive(tiny_model_dir):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1, got 0"):
        GRPOModule(**tiny_module_args(tiny_model_dir), max_nonfinite_steps=0)
