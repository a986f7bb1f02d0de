import math

import pytest
import torch

from lit_rl.algorithms import (
    aggregate,
    explained_variance,
    grpo_loss,
    kl_penalty,
    micro_batch_weight,
    ppo_policy_loss,
    value_loss,
)

F64 = dict(dtype=torch.float64)
LN2, LN15 = math.log(2), math.log(1.5)


def test_kl_estimators_hand_values():
    # pi = 0.5, pi_ref = 0.25: log(pi/pi_ref) = ln 2
    lp, ref = torch.tensor([math.log(0.5)], **F64), torch.tensor([math.log(0.25)], **F64)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(LN2, abs=1e-12)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * LN2**2, abs=1e-12)
    # k3 = pi_ref/pi - log(pi_ref/pi) - 1 = 0.5 + ln 2 - 1
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 + LN2 - 1, abs=1e-12)
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(lp, ref, "k4")  # type: ignore[arg-type]


def test_k3_is_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(50, 7, generator=g, **F64), torch.randn(50, 7, generator=g, **F64)
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(lp, lp, "k3"), torch.zeros_like(lp))


def _hand_batch():
    # Completion 0 (A = 1, 2 tokens):    log ratio [0, ln 1.5], log(pi_ref/pi) [0, ln 2]
    # Completion 1 (A = -0.5, 1 token):  log ratio [ln 0.5],    log(pi_ref/pi) [0]
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], **F64)
    old = lp - torch.tensor([[0.0, LN15], [math.log(0.5), 0.0]], **F64)
    ref = lp + torch.tensor([[0.0, LN2], [0.0, 0.0]], **F64)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -0.5], **F64)
    return lp, old, ref, adv, mask


def test_grpo_loss_hand_values():
    lp, old, ref, adv, mask = _hand_batch()
    loss, stats = grpo_loss(lp, old, ref, adv, mask, epsilon=0.2, beta=0.1)
    # c0 t0: ratio 1, min(1, 1) = 1, k3 = 0                       -> 1
    # c0 t1: ratio 1.5 clipped to 1.2 -> 1.2, k3 = 2 - ln2 - 1     -> 1.2 - 0.1 (1 - ln 2)
    # c1 t0: ratio .5, min(.5 * -.5, .8 * -.5) = -.4, k3 = 0        -> -.4
    # Eq. 3: mean over tokens per completion, then over completions, negated.
    k3 = 1 - LN2
    expected = -(((1 + 1.2 - 0.1 * k3) / 2) + (-0.4)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["clip_ratio"].item() == pytest.approx(2 / 3, abs=1e-12)  # c0t1 and c1t0
    assert stats["kl"].item() == pytest.approx(k3 / 3, abs=1e-12)


def test_cispo_hand_values_and_every_token_keeps_its_gradient():
    lp, old, ref, adv, mask = _hand_batch()
    lp = lp.clone().requires_grad_(True)
    loss, stats = grpo_loss(
        lp, old, ref, adv, mask, epsilon=0.2, beta=0.0, loss_type="dapo", surrogate="cispo"
    )
    # Weights sg(clip(r, 0.8, 1.2)): c0 [1, 1.5 -> 1.2], c1 [0.5 -> 0.8]; times A log pi,
    # token mean over the 3 tokens (DAPO), negated.
    expected = -(1 * 1 * -1.0 + 1.2 * 1 * -2.0 + 0.8 * -0.5 * -0.5) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["clip_ratio"].item() == pytest.approx(2 / 3, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, lp)
    # d/d log pi: -weight * A / 3 on every counted token, the clipped ones too (PPO's clip
    # would give 0 at c0 t1 and c1 t0); nothing through the weight.
    expected_grad = torch.tensor([[-1 / 3, -1.2 / 3], [0.8 * 0.5 / 3, 0.0]], **F64)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_sapo_hand_values_and_its_gradient_is_the_policy_gradient_at_ratio_one():
    lp, old, ref, adv, mask = _hand_batch()
    lp = lp.clone().requires_grad_(True)
    loss, stats = grpo_loss(
        lp, old, ref, adv, mask, beta=0.0, surrogate="sapo", sapo_temperatures=(1.0, 2.0)
    )

    def gate(r: float, tau: float) -> float:
        return 4 / tau / (1 + math.exp(-tau * (r - 1)))

    # c0 (A = 1, tau 1): ratios 1, 1.5; c1 (A = -0.5, tau 2): ratio 0.5. GRPO's sequence mean.
    c0 = (gate(1.0, 1.0) + gate(1.5, 1.0)) / 2
    c1 = gate(0.5, 2.0) * -0.5
    assert loss.item() == pytest.approx(-(c0 + c1) / 2, abs=1e-12)
    assert stats["clip_ratio"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, lp)
    # d f / d log pi = r * 4 sigmoid'(tau (r - 1)) = 4 r s (1 - s): A / (|o| G) at r = 1.
    s0 = 1 / (1 + math.exp(-0.5))
    s1 = 1 / (1 + math.exp(1.0))
    expected_grad = [
        [-1 / 4, -1.5 * 4 * s0 * (1 - s0) / 4],
        [0.5 * 0.5 * 4 * s1 * (1 - s1) / 2, 0.0],
    ]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, **F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("surrogate", "loss_type"), [("cispo", "dapo"), ("sapo", "grpo")])
def test_cispo_and_sapo_accumulate_exactly_over_micro_batches(surrogate, loss_type):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(6, 5, generator=g, **F64) - 0.1
    old = lp + 0.3 * torch.randn(6, 5, generator=g, **F64)
    ref = lp + 0.2 * torch.randn(6, 5, generator=g, **F64)
    adv = torch.randn(6, generator=g, **F64)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 2, 4, 5])[:, None]
    args = dict(epsilon=0.2, epsilon_high=0.28, beta=0.04, loss_type=loss_type)
    leaf = lp.clone().requires_grad_(True)
    whole, _ = grpo_loss(leaf, old, ref, adv, mask, surrogate=surrogate, **args)
    (whole_grad,) = torch.autograd.grad(whole, leaf)
    aggregation = {"dapo": "batch_token_mean", "grpo": "sequence_mean"}[loss_type]
    leaf = lp.clone().requires_grad_(True)
    accumulated = 0.0
    for rows in [slice(0, 1), slice(1, 4), slice(4, 6)]:  # uneven on purpose
        part, _ = grpo_loss(
            leaf[rows], old[rows], ref[rows], adv[rows], mask[rows], surrogate=surrogate, **args
        )
        accumulated = accumulated + micro_batch_weight(mask[rows], mask, aggregation) * part
    (accumulated_grad,) = torch.autograd.grad(accumulated, leaf)
    torch.testing.assert_close(accumulated, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(accumulated_grad, whole_grad, rtol=0, atol=1e-12)


def test_loss_types_change_only_aggregation():
    lp, old, ref, adv, mask = _hand_batch()
    k3 = 1 - LN2
    tokens = [1.0, 1.2 - 0.1 * k3, -0.4]  # per-token objectives from the test above
    dapo, _ = grpo_loss(lp, old, ref, adv, mask, beta=0.1, loss_type="dapo")
    assert dapo.item() == pytest.approx(-sum(tokens) / 3, abs=1e-12)  # token mean
    bnpo, _ = grpo_loss(lp, old, ref, adv, mask, beta=0.1, loss_type="bnpo")
    assert bnpo.item() == pytest.approx(-sum(tokens) / 3, abs=1e-12)  # one micro-batch: dapo's
    # Dr. GRPO divides by N x the generation budget, not by the longest completion drawn.
    for budget in (2, 16):
        dr, _ = grpo_loss(
            lp, old, ref, adv, mask, beta=0.1, loss_type="dr_grpo", max_completion_length=budget
        )
        assert dr.item() == pytest.approx(-sum(tokens) / (2 * budget), abs=1e-12)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(lp, old, ref, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="unknown loss_type"):
        grpo_loss(lp, old, ref, adv, mask, loss_type="ppo")  # type: ignore[arg-type]


def test_dr_grpo_step_does_not_move_with_the_longest_completion():
    """The same completions padded to different lengths (as batches whose longest completion
    differs) give the same Dr. GRPO loss: the normaliser is the budget, a constant."""
    lp, old, ref, adv, mask = _hand_batch()
    args = dict(beta=0.1, loss_type="dr_grpo", max_completion_length=8)
    short, _ = grpo_loss(lp, old, ref, adv, mask, **args)
    pad = lambda x, value: torch.cat([x, torch.full((2, 3), value, dtype=x.dtype)], 1)  # noqa: E731
    long, _ = grpo_loss(
        pad(lp, -1.0), pad(old, -1.0), pad(ref, -1.0), adv, pad(mask, False), **args
    )
    assert short.item() == pytest.approx(long.item(), abs=1e-12)


def test_gspo_clips_the_length_normalised_sequence_ratio():
    # One completion of 2 tokens: log-ratios ln 2 and ln 1.5 -> s = (2 * 1.5)^(1/2) = sqrt 3.
    lp = torch.tensor([[LN2, LN15]], **F64)
    old = torch.zeros(1, 2, **F64)
    mask = torch.tensor([[True, True]])
    for advantage, expected_objective, clipped in [
        (1.0, 1.2, 1.0),  # s > 1 + eps: the clipped 1.2 * A is the minimum, on both tokens
        (-1.0, -math.sqrt(3), 0.0),  # negative A: the unclipped s * A is the minimum
    ]:
        loss, stats = grpo_loss(
            lp,
            old,
            None,
            torch.tensor([advantage], **F64),
            mask,
            beta=0.0,
            importance_sampling_level="sequence",
        )
        assert loss.item() == pytest.approx(-expected_objective, abs=1e-12)
        assert stats["ratio"].item() == pytest.approx(math.sqrt(3), abs=1e-12)
        assert stats["clip_ratio"].item() == clipped
    # Its gradient per token is s * A / |o_i| (unclipped, GSPO Eq. 10 with the mean).
    lp = lp.clone().requires_grad_(True)
    loss, _ = grpo_loss(
        lp,
        old,
        None,
        torch.tensor([-1.0], **F64),
        mask,
        beta=0.0,
        importance_sampling_level="sequence",
    )
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.full((1, 2), math.sqrt(3) / 2, **F64))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_the_kl_in_the_loss_takes_any_estimator(estimator):
    lp, old, ref, adv, mask = _hand_batch()
    base, _ = grpo_loss(lp, old, ref, adv, mask, beta=0.0)
    with_kl, stats = grpo_loss(lp, old, ref, adv, mask, beta=0.1, kl_estimator=estimator)
    log_ratio = (ref - lp)[mask]  # log(pi_ref / pi) of the counted tokens
    per_token = {"k1": -log_ratio, "k2": 0.5 * log_ratio**2, "k3": log_ratio.exp() - log_ratio - 1}
    kl = per_token[estimator]
    # Sequence mean: tokens 0, 1 are completion 0, token 2 completion 1.
    expected = 0.1 * ((kl[0] + kl[1]) / 2 + kl[2]) / 2
    assert (with_kl - base).item() == pytest.approx(expected.item(), abs=1e-12)
    assert stats["kl"].item() == pytest.approx(kl.mean().item(), abs=1e-12)
    ppo, ppo_stats = ppo_policy_loss(
        lp,
        old,
        adv[:, None].expand_as(lp),
        mask,
        ref_logprobs=ref,
        beta=0.1,
        kl_estimator=estimator,
    )
    ppo_base, _ = ppo_policy_loss(lp, old, adv[:, None].expand_as(lp), mask)
    assert (ppo - ppo_base).item() == pytest.approx(0.1 * kl.mean().item(), abs=1e-12)


def test_epsilon_high_decouples_upper_clip():
    lp, old, ref, adv, mask = _hand_batch()
    # With epsilon_high = 0.6 the ratio 1.5 is no longer clipped: c0t1 = 1.5 - 0.1 k3
    loss, stats = grpo_loss(lp, old, ref, adv, mask, beta=0.1, epsilon_high=0.6)
    k3 = 1 - LN2
    assert loss.item() == pytest.approx(-(((1 + 1.5 - 0.1 * k3) / 2) - 0.4) / 2, abs=1e-12)
    assert stats["clip_ratio"].item() == pytest.approx(1 / 3, abs=1e-12)


def test_grpo_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    n, t, eps, beta = 6, 5, 0.2, 0.04
    lp = torch.randn(n, t, generator=g, **F64) * 0.3 - 1
    old = lp + torch.randn(n, t, generator=g, **F64) * 0.3
    ref = lp + torch.randn(n, t, generator=g, **F64) * 0.3
    adv = torch.randn(n, t, generator=g, **F64)
    lengths = [5, 1, 3, 4, 2, 5]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    loss, _ = grpo_loss(lp, old, ref, adv, mask, epsilon=eps, beta=beta)
    total = 0.0
    for i in range(n):
        seq = 0.0
        for k in range(lengths[i]):
            r = math.exp(lp[i, k] - old[i, k])
            a = adv[i, k].item()
            surrogate = min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            q = math.exp(ref[i, k] - lp[i, k])
            seq += surrogate - beta * (q - math.log(q) - 1)
        total += seq / lengths[i]
    assert loss.item() == pytest.approx(-total / n, abs=1e-12)


def test_grpo_gradient_is_eq21_at_ratio_one():
    # DeepSeekMath Eq. 21: at pi = pi_old, d J / d log pi_t = A + beta (pi_ref / pi - 1),
    # times Eq. 3's weights 1 / (G |o_i|) for a single group.
    g = torch.Generator().manual_seed(4)
    n, t, beta = 4, 6, 0.04
    lp = (torch.randn(n, t, generator=g, **F64) - 1).requires_grad_()
    ref = lp.detach() + torch.randn(n, t, generator=g, **F64) * 0.5
    adv = torch.randn(n, generator=g, **F64)
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    loss, stats = grpo_loss(lp, lp.detach(), ref, adv, mask, beta=beta)
    loss.backward()
    coefficient = adv[:, None] + beta * (torch.exp(ref - lp.detach()) - 1)
    expected = coefficient / (n * lengths[:, None]) * mask
    torch.testing.assert_close(-lp.grad, expected, rtol=0, atol=1e-12)
    assert stats["clip_ratio"].item() == 0.0


def test_beta_zero_needs_no_reference():
    lp, old, _, adv, mask = _hand_batch()
    loss, stats = grpo_loss(lp, old, None, adv, mask, beta=0.0)
    assert "kl" not in stats and torch.isfinite(loss)
    with pytest.raises(ValueError, match="beta=0.0"):
        grpo_loss(lp, old, None, adv, mask, beta=0.04)


def test_ppo_policy_loss_hand_values():
    # Tokens: (ratio 1.5, A 2) -> min(3, 2.4) = 2.4; (ratio .5, A 1) -> min(.5, .8) = .5;
    # third token masked. Token mean over 2 counted tokens, negated: -(2.4 + .5) / 2
    lp = torch.zeros(1, 3, **F64)
    old = -torch.log(torch.tensor([[1.5, 0.5, 7.0]], **F64))
    adv = torch.tensor([[2.0, 1.0, 5.0]], **F64)
    mask = torch.tensor([[True, True, False]])
    loss, stats = ppo_policy_loss(lp, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(-(2.4 + 0.5) / 2, abs=1e-12)
    assert stats["clip_ratio"].item() == pytest.approx(0.5, abs=1e-12)
    # approx_kl: k3 with log(pi_old/pi) = [-ln 1.5, ln 2] -> (1/1.5 + ln 1.5 - 1 + 2 - ln 2 - 1)/2
    expected_kl = (1 / 1.5 + LN15 - 1 + 2 - LN2 - 1) / 2
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-12)


def test_value_loss_hand_values():
    # token 0: V .5, V_old .0, R 1: clipped V .2 -> max(.25, .64) = .64 (clipped wins)
    # token 1: V 1., V_old 1., R 0: max(1, 1) = 1
    # token 2: masked. 0.5 * mean(.64, 1) = .41
    values = torch.tensor([[0.5, 1.0, 9.0]], **F64)
    old = torch.tensor([[0.0, 1.0, 0.0]], **F64)
    returns = torch.tensor([[1.0, 0.0, 0.0]], **F64)
    mask = torch.tensor([[True, True, False]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.41, abs=1e-12)
    assert stats["value_clip_ratio"].item() == pytest.approx(0.5, abs=1e-12)


def test_values_inside_the_clip_range_are_never_counted_as_clipped():
    # Small float32 values (a fresh value head's) within 0.18 of V_old, inside the range 0.2:
    # the clipped value is V itself, so no token is clipped and the loss is the unclipped one
    # exactly. (Written as V_old + clamp(V - V_old), V came back an ulp off on ~1/3 of these
    # tokens and ~2 % counted as clipped: a fraction that depended on rounding, which moved
    # train/value_clip_ratio by 0.02 between two runs whose weights differed by 1e-7.)
    generator = torch.Generator().manual_seed(0)
    old = (torch.randn(4, 250, generator=generator) * 0.05).clamp(-0.09, 0.09)
    values = (torch.randn(4, 250, generator=generator) * 0.05).clamp(-0.09, 0.09)
    returns = torch.randn(4, 250, generator=generator)
    mask = torch.ones(4, 250, dtype=torch.bool)
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    assert stats["value_clip_ratio"].item() == 0.0
    assert loss.item() == (0.5 * ((values - returns) ** 2).mean()).item()


def test_aggregate_hand_values():
    x = torch.tensor([[1.0, 3.0, 100.0], [2.0, 100.0, 100.0]], **F64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate(x, mask, "sequence_mean").item() == pytest.approx((2 + 2) / 2)
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(6 / 3)
    assert aggregate(x, mask, "constant_normalizer", 3).item() == pytest.approx(6 / 6)
    assert aggregate(x, mask, "constant_normalizer", 10).item() == pytest.approx(6 / 20)


@pytest.mark.parametrize(
    "aggregation", ["sequence_mean", "token_mean", "constant_normalizer", "batch_token_mean"]
)
def test_micro_batch_weights_make_accumulation_exact(aggregation):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=g, **F64)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 2, 4, 5])[:, None]
    whole = aggregate(values, mask, aggregation, 5)
    parts = [slice(0, 1), slice(1, 4), slice(4, 6)]  # uneven on purpose
    accumulated = sum(
        micro_batch_weight(mask[rows], mask, aggregation)
        * aggregate(values[rows], mask[rows], aggregation, 5)
        for rows in parts
    )
    torch.testing.assert_close(accumulated, whole, rtol=0, atol=1e-12)


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 3.0, 99.0]], **F64)
    mask = torch.tensor([[True, True, False]])
    # Var(returns) over counted tokens = 1; perfect predictions give 1, the mean gives 0.
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(
        0.0
    )
    # Predictions [1, 2]: residuals [0, 1], variance 0.25 -> 1 - 0.25 / 1.
    predicted = torch.tensor([[1.0, 2.0, 0.0]], **F64)
    assert explained_variance(predicted, returns, mask).item() == pytest.approx(0.75)
    constant = torch.tensor([[2.0, 2.0, 5.0]], **F64)  # counted returns do not vary
    assert math.isnan(explained_variance(predicted, constant, mask).item())
