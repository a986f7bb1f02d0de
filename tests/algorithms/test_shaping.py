import pytest
import torch

from lit_rl.algorithms import (
    AdaptiveKLController,
    kl_penalty,
    last_counted_token,
    overlong_penalty,
    token_level_rewards,
)


def test_sequence_reward_lands_on_the_last_counted_token():
    rewards = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    expected = torch.tensor([[0.0, 0.0, 1.0], [-2.0, 0.0, 0.0]])
    assert torch.equal(token_level_rewards(rewards, mask), expected)


def test_kl_in_the_reward_by_hand():
    # Completion 0 has 3 tokens, completion 1 has 2 (one padding token).
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    kl = kl_penalty(logprobs, ref, "k1")  # log pi - log pi_ref
    assert torch.equal(kl, torch.tensor([[0.5, 0.0, 0.5], [-0.5, 2.0, -9.0]], dtype=torch.float64))
    shaped = token_level_rewards(rewards, mask, kl, kl_coef=0.1)
    # r_t = -0.1 * kl_t, + R on the last counted token; padding 0 (its kl of -9 is ignored).
    expected = torch.tensor([[-0.05, 0.0, 1.0 - 0.05], [0.05, -0.2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(shaped, expected, rtol=0, atol=1e-12)


def test_an_empty_completion_is_refused():
    with pytest.raises(ValueError, match="at least one counted token"):
        token_level_rewards(torch.ones(1), torch.zeros(1, 3, dtype=torch.bool))


def test_adaptive_kl_controller_follows_ziegler():
    controller = AdaptiveKLController(coef=0.1, target=6.0, horizon=10_000)
    # KL 9 is 50 % over target: error clipped to +0.2; coef *= 1 + 0.2 * 256 / 10000.
    assert controller.update(9.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    # KL 5.4 is 10 % under target: coef *= 1 - 0.1 * 0.0256.
    before = controller.coef
    assert controller.update(5.4, 256) == pytest.approx(before * (1 - 0.1 * 0.0256))
    fixed = AdaptiveKLController(coef=0.05)
    assert fixed.update(100.0, 256) == 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(coef=-1.0), "kl_coef must be >= 0"),
        (dict(coef=0.1, target=0.0), "kl_target must be > 0"),
        (dict(coef=0.1, target=1.0, horizon=0), "kl_horizon must be >= 1"),
    ],
)
def test_adaptive_kl_controller_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveKLController(**kwargs)


def test_overlong_penalty_is_dapo_eq13():
    # L_max 64, L_cache 16: free up to 48 tokens, then linear to -1 at 64.
    lengths = torch.tensor([10, 48, 49, 56, 64])
    penalty = overlong_penalty(lengths, max_length=64, buffer_length=16, penalty_factor=0.5)
    expected = 0.5 * torch.tensor([0.0, 0.0, -1 / 16, -8 / 16, -1.0])
    torch.testing.assert_close(penalty, expected)
    with pytest.raises(ValueError, match="buffer_length must be in"):
        overlong_penalty(lengths, max_length=64, buffer_length=0)


def test_the_reward_lands_on_an_episodes_last_sampled_token():
    # The mask has gaps (the environment's tokens) and ends before the padding.
    mask = torch.tensor(
        [[True, False, False, True, True, False], [False, True, False, False, False, False]]
    )
    assert last_counted_token(mask).tolist() == [4, 1]
    shaped = token_level_rewards(torch.tensor([2.0, 3.0]), mask)
    assert torch.equal(shaped, torch.tensor([[0, 0, 0, 0, 2.0, 0], [0, 3.0, 0, 0, 0, 0]]))
