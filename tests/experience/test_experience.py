"""Experience slicing and the estimators as wrappers of the pure functions."""

import statistics

import pytest
import torch

from lit_rl.algorithms import token_level_rewards
from lit_rl.experience import (
    GAE,
    AdvantageInputs,
    GroupNormalized,
    LeaveOneOut,
    ProcessSupervised,
    ReinforcePlusPlus,
)
from tests.conftest import build_tokenizer, make_rollout


def _experience():
    tokenizer = build_tokenizer()
    experience = make_rollout(tokenizer, ["a", "bb", "ccc", "dddd", "e", "ff"])
    experience.rewards = torch.arange(6.0)
    experience.values = torch.randn(experience.completion_mask.shape)
    experience.reward_components = {"c": torch.arange(6.0) * 10}
    experience.prompts = [f"p{i}" for i in range(6)]
    experience.completions = [f"c{i}" for i in range(6)]
    return experience


def test_select_keeps_every_field_row_aligned():
    experience = _experience()
    part = experience.select(torch.tensor([4, 1]))
    assert len(part) == 2
    assert torch.equal(part.rewards, torch.tensor([4.0, 1.0]))
    assert torch.equal(part.input_ids, experience.input_ids[[4, 1]])
    assert torch.equal(part.values, experience.values[[4, 1]])
    assert torch.equal(part.reward_components["c"], torch.tensor([40.0, 10.0]))
    assert part.prompts == ["p4", "p1"] and part.completions == ["c4", "c1"]
    assert part.old_logprobs is None and part.returns is None


def test_minibatches_partition_the_rows():
    experience = _experience()
    generator = torch.Generator().manual_seed(0)
    parts = experience.minibatches(3, generator)
    assert [len(p) for p in parts] == [2, 2, 2]
    rows = torch.cat([p.rewards for p in parts])
    assert sorted(rows.tolist()) == list(range(6)) and rows.tolist() != list(range(6))
    in_order = experience.split(4)
    assert [len(p) for p in in_order] == [2, 2, 1, 1]
    assert torch.cat([p.rewards for p in in_order]).tolist() == list(range(6))
    with pytest.raises(ValueError, match="cannot cut 6 rollouts into 7 minibatches"):
        experience.split(7)


def _kl(generator: torch.Generator) -> torch.Tensor:
    """A per-token KL for ``_inputs``: |noise|, so nonnegative as a KL estimate."""
    return torch.randn(4, 5, generator=generator).abs()


def _inputs(**overrides):
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 3, 4])[:, None]
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    # The outcome on each last token minus a per-token KL (0.1 x |noise|), as in the reward.
    kl = _kl(g)
    defaults = dict(
        rewards=rewards,
        token_rewards=token_level_rewards(rewards, mask, kl, kl_coef=0.1),
        completion_mask=mask,
        group_size=2,
        values=torch.randn(4, 5, generator=g),
    )
    return AdvantageInputs(**{**defaults, **overrides})


def _pair_advantage(a: float, b: float, eps: float = 1e-4) -> float:
    """(a - mean) / (std + eps) for a group of two: mean (a + b) / 2, and the sample std of
    two values is |a - b| / sqrt(2)."""
    return ((a - b) / 2) / (abs(a - b) / 2**0.5 + eps)


def test_group_normalized_is_the_outcome_advantage_on_every_counted_token():
    inputs = _inputs()
    mask = inputs.completion_mask
    plain = _inputs(token_rewards=token_level_rewards(inputs.rewards, mask))
    advantages, returns = GroupNormalized()(plain)
    # Group 1, rewards [1, 0]: mean 0.5, sample std sqrt(0.5), so +-0.5 / (0.70711 + 1e-4) =
    # +-0.70700. Group 2 has equal rewards [0.5, 0.5]: zero advantage, not NaN.
    a = 0.5 / (0.5**0.5 + 1e-4)
    expected = torch.tensor([a, -a, 0.0, 0.0])[:, None] * mask
    # float32 division against float64 arithmetic: a few ulps of a value near 1.
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    assert returns is None
    assert torch.equal(advantages[2:], torch.zeros(2, 5))
    dr_grpo, _ = GroupNormalized(scale_by_std=False)(plain)
    assert dr_grpo[0, 0].item() == pytest.approx(0.5)  # r - mean = 1 - 0.5
    # With a KL in the reward, the group statistics are of each completion's return: the
    # outcome minus 0.1 x the KL summed over its counted tokens.
    shaped, _ = GroupNormalized()(inputs)
    kl = _kl(torch.Generator().manual_seed(0))  # the draw _inputs made
    ret = [inputs.rewards[i].item() - 0.1 * kl[i, mask[i]].sum().item() for i in range(4)]
    by_hand = [
        _pair_advantage(ret[0], ret[1]),
        _pair_advantage(ret[1], ret[0]),
        _pair_advantage(ret[2], ret[3]),
        _pair_advantage(ret[3], ret[2]),
    ]
    # float32 sums and division against float64: ~1e-7 off on values near 0.7.
    torch.testing.assert_close(shaped, torch.tensor(by_hand)[:, None] * mask, rtol=0, atol=1e-6)


def test_process_supervised_wraps_the_pure_function_and_needs_step_rewards():
    step_rewards = torch.tensor([[1.0, 0.0], [0.5, 0.0], [1.0, 1.0], [0.0, 0.0]])
    step_ends = torch.tensor([[1, 4], [1, -1], [2, -1], [0, 3]])
    inputs = _inputs(step_rewards=step_rewards, step_ends=step_ends)
    advantages, _ = ProcessSupervised()(inputs)
    # Group 1 (rows 0, 1): real steps 1, 0 (row 0) and 0.5 (row 1; its -1 step is padding):
    # mean 0.5, sample std sqrt((0.25 + 0.25 + 0) / 2) = 0.5, so row 0's steps normalise to
    # +-0.5 / (0.5 + 1e-4) = +-0.9998 and row 1's to 0. Row 0, step ends [1, 4]: tokens 0-1
    # sum both steps (0.9998 - 0.9998 = 0), tokens 2-4 only the second (-0.9998).
    p = 0.5 / (0.5 + 1e-4)
    # Group 2 (rows 2, 3): real steps 1 (row 2) and 0, 0 (row 3): mean 1/3, sample std
    # sqrt((4/9 + 1/9 + 1/9) / 2) = 1/sqrt(3), so 1 -> (2/3) / (0.57735 + 1e-4) = 1.1545 and
    # 0 -> -0.5773. Row 2 ends its step at 2; row 3 at 0 and 3 (token 0 sums both).
    q = (2 / 3) / (3**-0.5 + 1e-4)
    expected = torch.tensor(
        [
            [0.0, 0.0, -p, -p, -p],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [q, q, q, 0.0, 0.0],
            [-q, -q / 2, -q / 2, -q / 2, 0.0],
        ]
    )
    # float32 mean/std/division against float64: ~1e-7 off on values near 1.
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ProcessSupervised needs step rewards"):
        ProcessSupervised()(_inputs())
    # With outcome_weight, the outcome advantage (r - mean) / (std + eps) joins every token.
    combined, _ = ProcessSupervised(outcome_weight=0.5)(inputs)
    # Group 1 (rows 0, 1): rewards 1 and 0, mean 0.5, sample std sqrt(0.5).
    outcome = torch.tensor([0.5, -0.5, 0.0, 0.0]) / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(
        combined, (expected + 0.5 * outcome[:, None]) * inputs.completion_mask, rtol=0, atol=1e-6
    )


def test_gae_estimator_whitens_advantages_and_returns_unwhitened_targets():
    # Row 0 counts 3 tokens: r = [0, 0, 1], V = [0.5, 0.2, 0.4]. Row 1 counts 1 token, r = 1,
    # V = 0.5; its padding (V 9) must neither bootstrap nor reach the returns.
    mask = torch.tensor([[True, True, True], [True, False, False]])
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0, 1.0]),
        token_rewards=torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
        completion_mask=mask,
        group_size=1,
        values=torch.tensor([[0.5, 0.2, 0.4], [0.5, 9.0, 9.0]]),
    )
    plain, returns = GAE(gamma=0.9, lam=0.8, whiten_advantages=False)(inputs)
    # gamma * lam = 0.72. Row 0, from the end (V after the last token is 0):
    #   delta_2 = 1 - 0.4 = 0.6;               A_2 = 0.6
    #   delta_1 = 0.9 * 0.4 - 0.2 = 0.16;      A_1 = 0.16 + 0.72 * 0.6 = 0.592
    #   delta_0 = 0.9 * 0.2 - 0.5 = -0.32;     A_0 = -0.32 + 0.72 * 0.592 = 0.10624
    # Row 1: A_0 = 1 - 0.5 = 0.5. Returns = A + V: [0.60624, 0.792, 1.0] and [1.0].
    raw = [0.10624, 0.592, 0.6, 0.5]  # the counted tokens, row-major
    expected = torch.tensor([[0.10624, 0.592, 0.6], [0.5, 0.0, 0.0]])
    # float32 recursion against exact decimals: ~1e-7 off on values below 1.
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
    expected_returns = torch.tensor([[0.60624, 0.792, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(returns, expected_returns, rtol=0, atol=1e-6)
    # Whitened over the 4 counted tokens with their sample std; the returns stay raw.
    advantages, whitened_returns = GAE(gamma=0.9, lam=0.8)(inputs)
    mean, std = statistics.mean(raw), statistics.stdev(raw)  # 0.44956, 0.23333
    by_hand = [(a - mean) / std for a in raw]  # [-1.47137, 0.61046, 0.64474, 0.21617]
    expected = torch.tensor([by_hand[:3], [by_hand[3], 0.0, 0.0]])
    # whiten's eps 1e-8 under the variance 0.054 moves values near 1.5 by ~1.4e-7, float32
    # rounding by ~1e-7 more.
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    assert torch.equal(whitened_returns, returns)
    assert GAE.needs_values and not GroupNormalized.needs_values
    with pytest.raises(ValueError, match="GAE needs values"):
        GAE()(_inputs(values=None))


def test_leave_one_out_uses_the_return_with_the_kl_in_the_reward():
    inputs = _inputs()  # token_rewards random: the return is their sum per completion
    advantages, returns = LeaveOneOut()(inputs)
    ret = inputs.token_rewards.sum(1)
    # Group of 2: each completion's baseline is the other one's return.
    expected = torch.stack([ret[0] - ret[1], ret[1] - ret[0], ret[2] - ret[3], ret[3] - ret[2]])
    torch.testing.assert_close(advantages, expected[:, None] * inputs.completion_mask)
    assert returns is None and not LeaveOneOut.needs_values


def test_reinforce_plus_plus_whitens_the_returns_to_go_over_the_batch():
    inputs = _inputs()
    mask = inputs.completion_mask
    advantages, returns = ReinforcePlusPlus()(inputs)
    # By hand: returns-to-go (gamma 1) are reversed cumulative sums over counted tokens, then
    # (G - mean) / std over every counted token of the batch.
    rewards = inputs.token_rewards * mask
    to_go = rewards.flip(1).cumsum(1).flip(1)
    counted = to_go[mask]
    expected = (to_go - counted.mean()) / counted.std() * mask
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-5)
    assert returns is None
    # The group baseline subtracts each group's mean outcome reward from its last tokens.
    with_baseline, _ = ReinforcePlusPlus(baseline="group_mean")(inputs)
    group_mean = torch.tensor([0.5, 0.5, 0.5, 0.5])  # rewards [1, 0], [0.5, 0.5]
    last = mask.sum(1) - 1
    shifted = inputs.token_rewards.clone()
    shifted[torch.arange(4), last] -= group_mean
    to_go = (shifted * mask).flip(1).cumsum(1).flip(1)
    counted = to_go[mask]
    torch.testing.assert_close(
        with_baseline, (to_go - counted.mean()) / counted.std() * mask, rtol=0, atol=1e-5
    )
