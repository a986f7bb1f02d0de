import math

import pytest
import torch

from lit_rl.algorithms import (
    discounted_returns,
    gae,
    group_normalized_advantages,
    leave_one_out_advantages,
    process_supervised_advantages,
    token_level_rewards,
    whiten,
)

F64 = dict(dtype=torch.float64)


def test_group_normalized_hand_values():
    # Group 1 rewards [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3).
    # Group 2 rewards [3, 3, 3, 5]: mean 3.5, deviations [-.5, -.5, -.5, 1.5],
    # unbiased var = (3 * .25 + 2.25) / 3 = 1, std 1.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 5.0], **F64)
    adv = group_normalized_advantages(rewards, group_size=4, eps=0.0)
    s = math.sqrt(1 / 3)
    expected = torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, -0.5, -0.5, -0.5, 1.5], **F64)
    assert adv.shape == (8,)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_group_normalized_eps_in_denominator():
    # [0, 2]: mean 1, std sqrt(2); A = ±1 / (sqrt(2) + 1e-4)
    adv = group_normalized_advantages(torch.tensor([0.0, 2.0], **F64), group_size=2)
    expected = torch.tensor([-1.0, 1.0], **F64) / (math.sqrt(2) + 1e-4)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_group_normalized_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(6 * 5, generator=g, **F64)
    adv = group_normalized_advantages(rewards, group_size=5)
    naive = torch.empty_like(rewards)
    for k in range(6):
        group = [rewards[k * 5 + i].item() for i in range(5)]
        mean = sum(group) / 5
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 4)
        for i in range(5):
            naive[k * 5 + i] = (group[i] - mean) / (std + 1e-4)
    torch.testing.assert_close(adv, naive, rtol=0, atol=1e-10)


def test_zero_variance_group_gives_zero_not_nan():
    adv = group_normalized_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], **F64), 3)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[:3], torch.zeros(3, **F64))
    assert adv[3:].abs().sum() > 0


def test_dr_grpo_is_mean_centred_only():
    # Dr. GRPO: r - mean, group [1, 0, 0, 0] -> mean 0.25 -> [.75, -.25, -.25, -.25]
    adv = group_normalized_advantages(torch.tensor([1.0, 0, 0, 0], **F64), 4, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25], **F64))


def test_group_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_generations >= 2"):
        group_normalized_advantages(torch.zeros(4), group_size=1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_normalized_advantages(torch.zeros(4), group_size=3)


def test_process_supervised_hand_values():
    # One group of G=2 completions, T=4 tokens.
    # Completion 0: steps ending at tokens 1 and 3 with rewards 1 and 0.
    # Completion 1: one step ending at token 2 with reward 2 (second step is padding).
    # Group step rewards {1, 0, 2}: mean 1, unbiased var = (0 + 1 + 1) / 2 = 1, std 1.
    # Normalised: completion 0 -> [0, -1]; completion 1 -> [1].
    # A[0] = [0 + -1, 0 + -1, -1, -1] (token t sums steps ending at >= t)
    # A[1] = [1, 1, 1, 0]
    step_rewards = torch.tensor([[1.0, 0.0], [2.0, 9.0]], **F64)
    step_ends = torch.tensor([[1, 3], [2, -1]])
    adv = process_supervised_advantages(step_rewards, step_ends, group_size=2, num_tokens=4, eps=0)
    expected = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 0.0]], **F64)
    assert adv.shape == (2, 4)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_process_supervised_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    n, s, t, group = 6, 3, 7, 3
    step_rewards = torch.rand(n, s, generator=g, **F64)
    step_ends = torch.sort(torch.randint(0, t, (n, s), generator=g), dim=1).values
    step_ends[1, 2] = -1
    step_ends[4, 1:] = -1
    adv = process_supervised_advantages(step_rewards, step_ends, group, t)
    naive = torch.zeros(n, t, **F64)
    for k in range(n // group):
        rows = range(k * group, (k + 1) * group)
        vals = [step_rewards[i, j].item() for i in rows for j in range(s) if step_ends[i, j] >= 0]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for i in rows:
            for tok in range(t):
                for j in range(s):
                    if step_ends[i, j] >= tok:
                        naive[i, tok] += (step_rewards[i, j].item() - mean) / (std + 1e-4)
    torch.testing.assert_close(adv, naive, rtol=0, atol=1e-10)


def test_process_supervised_single_step_group_is_zero():
    adv = process_supervised_advantages(
        torch.tensor([[5.0], [0.0]], **F64), torch.tensor([[2], [-1]]), 2, 3
    )
    assert torch.equal(adv, torch.zeros(2, 3, **F64))


def test_gae_hand_values():
    # One completion of 3 tokens, gamma 0.9, lam 0.5; rewards [0, 0, 1], values [.5, .6, .7].
    # delta_2 = 1 + 0.9*0 - .7 = .3
    # delta_1 = 0 + 0.9*.7 - .6 = .03
    # delta_0 = 0 + 0.9*.6 - .5 = .04
    # A_2 = .3; A_1 = .03 + .45*.3 = .165; A_0 = .04 + .45*.165 = .11425
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]], **F64)
    values = torch.tensor([[0.5, 0.6, 0.7, 123.0]], **F64)  # last token is padding
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.11425, 0.165, 0.3, 0.0]], **F64))
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 1.0, 0.0]], **F64))


def test_gae_matches_naive_sum_of_discounted_deltas():
    g = torch.Generator().manual_seed(2)
    n, t, gamma, lam = 4, 6, 0.97, 0.9
    rewards = torch.randn(n, t, generator=g, **F64)
    values = torch.randn(n, t, generator=g, **F64)
    lengths = [6, 3, 1, 5]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, length in enumerate(lengths):
        v = [values[i, k].item() for k in range(length)] + [0.0]
        deltas = [rewards[i, k].item() + gamma * v[k + 1] - v[k] for k in range(length)]
        for k in range(length):
            expected = sum((gamma * lam) ** m * deltas[k + m] for m in range(length - k))
            assert adv[i, k].item() == pytest.approx(expected, abs=1e-10)
            assert ret[i, k].item() == pytest.approx(expected + v[k], abs=1e-10)
        assert (adv[i, length:] == 0).all() and (ret[i, length:] == 0).all()


def test_whiten_hand_values():
    # masked values [1, 2, 3] (4th masked out): mean 2, unbiased var 1
    x = torch.tensor([1.0, 2.0, 3.0, 100.0], **F64)
    mask = torch.tensor([True, True, True, False])
    torch.testing.assert_close(whiten(x, mask, eps=0)[:3], torch.tensor([-1.0, 0.0, 1.0], **F64))
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False, eps=0)[:3], torch.tensor([1.0, 2.0, 3.0], **F64)
    )
    with pytest.raises(ValueError, match="at least 2"):
        whiten(x, torch.tensor([True, False, False, False]))


def test_gae_on_ppo_rewards_matches_a_naive_loop_per_completion():
    # PPO's per-token rewards: -kl_coef * KL on every token, the score on the last real token;
    # right-padded rows of different lengths. The naive loop walks each completion backwards.
    g = torch.Generator().manual_seed(3)
    lengths, t, gamma, lam, kl_coef = [5, 2, 1, 4], 5, 1.0, 0.95, 0.1
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    scores = torch.tensor([1.0, 0.0, -1.0, 0.5], **F64)
    kl = torch.randn(4, t, generator=g, **F64)
    values = torch.randn(4, t, generator=g, **F64)
    rewards = token_level_rewards(scores, mask, kl, kl_coef)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, length in enumerate(lengths):
        running, next_value = 0.0, 0.0
        for k in reversed(range(length)):
            reward = -kl_coef * kl[i, k].item() + (scores[i].item() if k == length - 1 else 0.0)
            delta = reward + gamma * next_value - values[i, k].item()
            running = delta + gamma * lam * running
            next_value = values[i, k].item()
            assert adv[i, k].item() == pytest.approx(running, abs=1e-12)
            assert ret[i, k].item() == pytest.approx(running + values[i, k].item(), abs=1e-12)
        assert (adv[i, length:] == 0).all()


def test_global_statistics_on_one_process_are_the_plain_ones():
    from lit_rl.algorithms import global_mean, global_std

    values = torch.tensor([1.0, 2.0, 4.0, 7.0])  # mean 3.5; sample var (6.25+2.25+.25+12.25)/3 = 7
    assert global_mean(values).item() == pytest.approx(3.5)
    assert global_std(values).item() == pytest.approx(7**0.5)


def test_leave_one_out_hand_values():
    # Group [1, 0, 0]: baselines [0, 0.5, 0.5]; group [2, 4]: baselines [4, 2].
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 9.0], **F64)
    adv = leave_one_out_advantages(rewards[:3], group_size=3)
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5], **F64))
    adv = leave_one_out_advantages(rewards[3:5], group_size=2)
    torch.testing.assert_close(adv, torch.tensor([-2.0, 2.0], **F64))
    # G / (G - 1) times the group-centred reward.
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(12, generator=g, **F64)
    centred = group_normalized_advantages(rewards, 4, scale_by_std=False)
    torch.testing.assert_close(leave_one_out_advantages(rewards, 4), centred * 4 / 3)


def test_discounted_returns_hand_values():
    token_rewards = torch.tensor([[0.0, -0.1, 1.0, 7.0], [-0.2, 2.0, 5.0, 5.0]], **F64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    returns = discounted_returns(token_rewards, mask, gamma=0.5)
    # Row 0: G_2 = 1, G_1 = -0.1 + 0.5, G_0 = 0 + 0.5 * 0.4; padding 0 (its 7 ignored).
    torch.testing.assert_close(
        returns,
        torch.tensor([[0.2, 0.4, 1.0, 0.0], [0.8, 2.0, 0.0, 0.0]], **F64),
    )


def test_gae_skips_an_episodes_environment_tokens():
    # A two-turn episode: sampled tokens at 0, 1 and 4 (the environment wrote 2 and 3), then
    # padding. GAE runs over the sampled tokens as one sequence, bootstrapping from token 1 to
    # token 4: the same numbers as test_gae_hand_values on [0, 1, 4]; the environment's
    # tokens and their rewards and values (99, 55) count nowhere.
    rewards = torch.tensor([[0.0, 0.0, 99.0, 99.0, 1.0, 0.0]], **F64)
    values = torch.tensor([[0.5, 0.6, 55.0, 55.0, 0.7, 123.0]], **F64)
    mask = torch.tensor([[True, True, False, False, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.11425, 0.165, 0, 0, 0.3, 0]], **F64))
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 0, 0, 1.0, 0]], **F64))


def test_discounted_returns_discount_sampled_tokens_only():
    # Sampled at 0, 2, 3: G_3 = 1, G_2 = -0.1 + 0.5 * 1, G_0 = 0 + 0.5 * 0.4 (token 1, the
    # environment's, is neither a reward nor a discount step).
    token_rewards = torch.tensor([[0.0, 9.0, -0.1, 1.0]], **F64)
    mask = torch.tensor([[True, False, True, True]])
    returns = discounted_returns(token_rewards, mask, gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([[0.2, 0.0, 0.4, 1.0]], **F64))
