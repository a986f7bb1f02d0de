"""The engine-vs-trainer gap and its corrections against hand-computed values."""

import math

import pytest
import torch

from lit_rl.algorithms import (
    SamplerCorrection,
    grpo_loss,
    sampler_correction_weights,
    sampler_mismatch,
)

MASK = torch.tensor([[True, True, False], [True, True, True]])
TRAINER = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -3.0]])


def test_mismatch_statistics_hand_values():
    sampler = TRAINER + torch.tensor(
        [[0.1, -0.2, 9.0], [0.0, 0.3, -0.6]]
    )  # column 3 of row 0 is padding
    stats = sampler_mismatch(TRAINER, sampler, MASK, token_threshold=0.25)
    log_rho = [-0.1, 0.2, 0.0, -0.3, 0.6]
    k3 = sum(math.expm1(x) - x for x in log_rho) / 5
    assert stats["k3"].item() == pytest.approx(k3, rel=1e-6)  # float32 inputs
    assert stats["max_abs"].item() == pytest.approx(0.6)
    assert stats["frac_over"].item() == pytest.approx(2 / 5)


def test_mismatch_of_identical_logprobs_is_zero():
    stats = sampler_mismatch(TRAINER, TRAINER.clone(), MASK)
    assert all(value.item() == 0.0 for value in stats.values())


def test_correction_weights_hand_values():
    # log rho = trainer - sampler per token; rho = 3, 0.25 | 1, 1.5, 0.4 (padding ignored)
    sampler = TRAINER - torch.log(torch.tensor([[3.0, 0.25, 7.0], [1.0, 1.5, 0.4]]))
    weights = {
        kind: sampler_correction_weights(TRAINER, sampler, MASK, kind, low=0.5, high=2.0)
        for kind in ("none", "token_tis", "sequence_tis", "token_mask", "sequence_mask")
    }
    torch.testing.assert_close(weights["none"], MASK.float())
    torch.testing.assert_close(weights["token_tis"], torch.tensor([[2.0, 0.25, 0], [1, 1.5, 0.4]]))
    # rho(y) = 3 * 0.25 = 0.75 and 1 * 1.5 * 0.4 = 0.6
    torch.testing.assert_close(weights["sequence_tis"], torch.tensor([[0.75, 0.75, 0], [0.6] * 3]))
    torch.testing.assert_close(weights["token_mask"], torch.tensor([[0.0, 0, 0], [1, 1, 0]]))
    torch.testing.assert_close(weights["sequence_mask"], torch.tensor([[1.0, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="unknown sampler correction 'tis'"):
        sampler_correction_weights(TRAINER, sampler, MASK, "tis")


def test_the_setting_gives_its_modes_weights_and_none_without_a_correction():
    sampler = TRAINER - torch.log(torch.tensor([[3.0, 0.25, 7.0], [1.0, 1.5, 0.4]]))
    assert SamplerCorrection().weights(TRAINER, sampler, MASK) is None
    weights = SamplerCorrection("token_tis", high=1.2).weights(TRAINER, sampler, MASK)
    torch.testing.assert_close(weights, torch.tensor([[1.2, 0.25, 0], [1, 1.2, 0.4]]))
    with pytest.raises(ValueError, match="needs the engine's logprobs in the Experience"):
        SamplerCorrection("token_mask").weights(TRAINER, None, MASK)


def test_grpo_loss_weights_the_surrogate_not_the_kl():
    torch.manual_seed(0)
    logprobs = torch.randn(2, 3, requires_grad=True)
    ref = torch.randn(2, 3)
    advantages = torch.tensor([1.0, -1.0])
    weights = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 1.0]])
    loss, _ = grpo_loss(
        logprobs, logprobs.detach(), ref, advantages, MASK, beta=0.1, sampler_weights=weights
    )
    (grad,) = torch.autograd.grad(loss, logprobs)
    # At ratio 1 each token's gradient is -(w A + beta (pi_ref/pi - 1)) / |o_i| / G (Eq. 21).
    kl_grad = torch.exp(ref - logprobs.detach()) - 1
    expected = -(weights * advantages[:, None] + 0.1 * kl_grad) * MASK
    expected = expected / MASK.sum(1, keepdim=True) / 2
    torch.testing.assert_close(grad, expected)
