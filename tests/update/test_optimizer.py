"""AdamWWithWarmup: the learning rate of each optimizer step, by hand."""

import pytest
import torch

from lit_rl.update import AdamWWithWarmup


def test_the_rate_rises_linearly_then_stays():
    weight = torch.nn.Parameter(torch.ones(2))
    head = torch.nn.Parameter(torch.ones(1))
    settings = AdamWWithWarmup(learning_rate=0.4, weight_decay=0.1, warmup_steps=3)
    configured = settings.configure([{"params": [weight]}, {"params": [head], "lr": 1.0}])
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
    assert schedule["interval"] == "step"
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    rates = []
    for _ in range(5):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule["scheduler"].step()
    # (step + 1) / (warmup + 1) of each group's own rate, then 1.
    expected = [[0.4 * f, 1.0 * f] for f in (1 / 4, 2 / 4, 3 / 4, 1, 1)]
    assert rates == [pytest.approx(r) for r in expected]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0"):
        AdamWWithWarmup(learning_rate=0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
        AdamWWithWarmup(warmup_steps=-1)
