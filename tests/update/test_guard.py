"""GuardedOptimizerStep without a Trainer: clip, step, or skip a NaN/inf gradient leaving the
weights, optimizer state and schedule as they were; count; stop after k in a row."""

import math

import pytest
import torch

from lit_rl.update import GuardedOptimizerStep, refuse_loss_scaling


def _parts():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return weight, optimizer, scheduler


def _gradient(weight, values):
    weight.grad = torch.tensor(values)


def test_a_finite_gradient_is_clipped_and_stepped():
    weight, optimizer, scheduler = _parts()
    guard = GuardedOptimizerStep(max_grad_norm=1.0)
    _gradient(weight, [3.0, 4.0])
    norm = guard(optimizer, scheduler)
    assert norm.item() == pytest.approx(5.0)  # before clipping
    torch.testing.assert_close(weight.grad, torch.tensor([0.6, 0.8]))  # clipped to norm 1
    # AdamW's first step, by hand: m_hat = g and v_hat = g^2, so the step is lr * g / (|g| +
    # 1e-8) = 0.1 * sign(g) per weight, after the decoupled decay w * (1 - lr * 0.01):
    # [1 * 0.999 - 0.1, 2 * 0.999 - 0.1] = [0.899, 1.898].
    assert optimizer.defaults["weight_decay"] == 0.01  # torch's default, used above
    # float32 in [0.5, 2) (ulp <= 1.2e-7); Adam's eps moves the step by 0.1 * 1e-8 / 0.6.
    torch.testing.assert_close(weight.detach(), torch.tensor([0.899, 1.898]), rtol=0, atol=1e-6)
    assert scheduler.last_epoch == 1 and guard.nonfinite_steps == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_gradient_is_skipped_and_counted(bad):
    weight, optimizer, scheduler = _parts()
    guard = GuardedOptimizerStep(max_grad_norm=1.0, max_nonfinite_steps=3)
    _gradient(weight, [0.5, 0.5])
    guard(optimizer, scheduler)  # one good step: optimizer state exists
    after_good = weight.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[weight].items()}
    _gradient(weight, [bad, 0.5])
    with pytest.warns(UserWarning, match="skipped an optimizer step: the gradient norm is"):
        norm = guard(optimizer, scheduler)
    assert not math.isfinite(norm.item())
    assert torch.equal(weight.detach(), after_good) and weight.grad is None
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in state.items())
    assert scheduler.last_epoch == 1  # the schedule did not move
    assert (guard.nonfinite_steps, guard.nonfinite_in_a_row) == (1, 1)
    _gradient(weight, [0.5, 0.5])
    guard(optimizer, scheduler)
    assert (guard.nonfinite_steps, guard.nonfinite_in_a_row) == (1, 0)  # a good step resets


def test_k_in_a_row_stop_naming_the_step_and_the_fixes():
    weight, optimizer, scheduler = _parts()
    guard = GuardedOptimizerStep(max_nonfinite_steps=2)
    _gradient(weight, [0.5, 0.5])
    guard(optimizer, scheduler)
    _gradient(weight, [math.nan, 0.0])
    with pytest.warns(UserWarning):
        guard(optimizer, scheduler)
    _gradient(weight, [math.nan, 0.0])
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError) as error:
        guard(optimizer, scheduler)
    message = str(error.value)
    assert (
        "2 optimizer steps in a row had a NaN/inf gradient (the last at optimizer step 1)"
        in message
    )
    assert "Lower learning_rate" in message and "dtype: float32" in message


def test_the_counts_travel_in_its_state_and_a_resumed_streak_stops_on_time():
    # Two bad steps, a checkpoint, then a third bad step after the resume: the limit of 3 in
    # a row is reached (a guard that forgot its streak would skip on and stop only at 5).
    weight, optimizer, scheduler = _parts()
    guard = GuardedOptimizerStep(max_nonfinite_steps=3)
    for _ in range(2):
        _gradient(weight, [math.nan, 0.0])
        with pytest.warns(UserWarning):
            guard(optimizer, scheduler)
    restored = GuardedOptimizerStep(max_nonfinite_steps=3)
    restored.load_state_dict(guard.state_dict())
    assert (restored.nonfinite_steps, restored.nonfinite_in_a_row) == (2, 2)
    _gradient(weight, [math.nan, 0.0])
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError, match="3 optimizer steps"):
        restored(optimizer, scheduler)


def test_a_checkpoint_without_the_streak_resumes_with_none():
    restored = GuardedOptimizerStep()
    restored.load_state_dict({"nonfinite_steps": 4})  # written before the streak was saved
    assert (restored.nonfinite_steps, restored.nonfinite_in_a_row) == (4, 0)


def test_bad_settings_and_loss_scaling_are_refused():
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
        GuardedOptimizerStep(max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1, got 0"):
        GuardedOptimizerStep(max_nonfinite_steps=0)
    with pytest.raises(ValueError, match="16-mixed scales the loss with a GradScaler"):
        refuse_loss_scaling("16-mixed")
    refuse_loss_scaling("bf16-mixed")
