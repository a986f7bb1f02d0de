"""The NaN/inf guard in training: an optimizer step with a non-finite gradient is skipped
(weights, optimizer state and learning-rate schedule untouched) and counted; k in a row stop
the run with an error that names the fixes, and no checkpoint holds a poisoned weight; two
processes skip the same step. (``GuardedOptimizerStep`` alone: tests/update/test_guard.py.)"""

import math

import pytest
import torch
from lightning.pytorch import Callback

from lit_rl.callbacks import PolicyCheckpoint
from lit_rl.modules import GRPOModule
from tests.conftest import fit_rollouts, tiny_module_args


class PoisonedGRPO(GRPOModule):
    """GRPO whose gradient gets one ``value`` (NaN or inf) entry at the optimizer-step
    attempts in ``poisoned`` (0, 1, ...: skipped attempts count)."""

    def __init__(self, *args, poisoned=frozenset(), value: float = math.nan, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poisoned = poisoned
        self.value = value

    def accumulate_gradients(self, micro, weight):
        output = super().accumulate_gradients(micro, weight)
        attempt = self.global_step + self.policy_update.guard.nonfinite_steps
        if attempt in self.poisoned:
            first = next(p for p in self.policy.parameters() if p.requires_grad)
            first.grad[0, 0] = self.value
        return output


class TrainableSnapshots(Callback):
    """The trainable weights after every optimizer-step attempt (taken or skipped)."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snapshots.append(
            {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        )


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_nonfinite_step_is_skipped_and_counted(tiny_model_dir, value):
    module = PoisonedGRPO(**tiny_module_args(tiny_model_dir), poisoned={1}, value=value)
    snapshots = TrainableSnapshots()
    trainer = fit_rollouts(module, tiny_model_dir, steps=3, callbacks=[snapshots])
    # Attempts (one per batch): step 0, the poisoned one (skipped), then steps 1 and 2.
    assert trainer.global_step == 3 and module.policy_update.guard.nonfinite_steps == 1
    first, skipped, after = snapshots.snapshots[:3]
    assert len(snapshots.snapshots) == 4
    assert all(torch.equal(first[n], skipped[n]) for n in first)  # untouched
    assert any(not torch.equal(skipped[n], after[n]) for n in first)  # training went on
    assert all(torch.isfinite(p).all() for p in snapshots.snapshots[-1].values())
    state = trainer.optimizers[0].state_dict()["state"]
    assert all(torch.isfinite(v["exp_avg"]).all() for v in state.values())
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule did not move
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 1.0


def test_k_nonfinite_steps_in_a_row_stop_the_run_and_no_checkpoint_is_poisoned(
    tiny_model_dir, tmp_path
):
    module = PoisonedGRPO(
        **tiny_module_args(tiny_model_dir), poisoned={2, 3, 4}, max_nonfinite_steps=3
    )
    checkpoints = PolicyCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row had a NaN/inf") as err:
        fit_rollouts(module, tiny_model_dir, steps=10, callbacks=[checkpoints])
    assert "the last at optimizer step 2" in str(err.value) and "Lower learning_rate" in str(
        err.value
    )
    assert module.policy_update.guard.nonfinite_in_a_row == 3
    # Every checkpoint written holds finite weights and optimizer state: the last one is of
    # step 2, the last good step, and equals the weights the run stopped with.
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    for path in [tmp_path / "last.ckpt", *tmp_path.glob("epoch=*.ckpt")]:
        checkpoint = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()), path
        for state in checkpoint["optimizer_states"][0]["state"].values():
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    live = module.state_dict()
    assert all(torch.equal(live[name], value) for name, value in last["state_dict"].items())


def test_max_nonfinite_steps_must_be_positive(tiny_model_dir):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1, got 0"):
        GRPOModule(**tiny_module_args(tiny_model_dir), max_nonfinite_steps=0)
