"""Experience slicing and the estimators as wrappers of the pure functions."""

import pytest
import torch

from lit_rl.algorithms import (
    gae,
    group_normalized_advantages,
    process_supervised_advantages,
    token_level_rewards,
    whiten,
)
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


def _inputs(**overrides):
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 3, 4])[:, None]
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    # The outcome on each last token minus a per-token KL (0.1 x |noise|), as in the reward.
    kl = torch.randn(4, 5, generator=g).abs()
    defaults = dict(
        rewards=rewards,
        token_rewards=token_level_rewards(rewards, mask, kl, kl_coef=0.1),
        completion_mask=mask,
        group_size=2,
        values=torch.randn(4, 5, generator=g),
    )
    return AdvantageInputs(**{**defaults, **overrides})


def test_group_normalized_is_the_outcome_advantage_on_every_counted_token():
    inputs = _inputs()
    plain = _inputs(token_rewards=token_level_rewards(inputs.rewards, inputs.completion_mask))
    advantages, returns = GroupNormalized()(plain)
    expected = group_normalized_advantages(inputs.rewards, 2)[:, None] * inputs.completion_mask
    assert torch.equal(advantages, expected) and returns is None
    # Group 2 has equal rewards: zero advantage, not NaN.
    assert torch.equal(advantages[2:], torch.zeros(2, 5))
    dr_grpo, _ = GroupNormalized(scale_by_std=False)(plain)
    assert dr_grpo[0, 0].item() == pytest.approx(0.5)  # r - mean = 1 - 0.5
    # With a KL in the reward, the group statistics are of each completion's return.
    shaped, _ = GroupNormalized()(inputs)
    returns_ = inputs.token_rewards.sum(1)
    expected = group_normalized_advantages(returns_, 2)[:, None] * inputs.completion_mask
    torch.testing.assert_close(shaped, expected)


def test_process_supervised_wraps_the_pure_function_and_needs_step_rewards():
    step_rewards = torch.tensor([[1.0, 0.0], [0.5, 0.0], [1.0, 1.0], [0.0, 0.0]])
    step_ends = torch.tensor([[1, 4], [1, -1], [2, -1], [0, 3]])
    inputs = _inputs(step_rewards=step_rewards, step_ends=step_ends)
    advantages, _ = ProcessSupervised()(inputs)
    expected = process_supervised_advantages(step_rewards, step_ends, 2, 5) * inputs.completion_mask
    assert torch.equal(advantages, expected)
    assert advantages[0, 0] != advantages[0, 2]  # per token, not per completion
    with pytest.raises(ValueError, match="ProcessSupervised needs step rewards"):
        ProcessSupervised()(_inputs())
    # With outcome_weight, the outcome advantage (r - mean) / (std + eps) joins every token.
    combined, _ = ProcessSupervised(outcome_weight=0.5)(inputs)
    # Group 1 (rows 0, 1): rewards 1 and 0, mean 0.5, sample std sqrt(0.5).
    outcome = torch.tensor([0.5, -0.5, 0.0, 0.0]) / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(
        combined, (expected + 0.5 * outcome[:, None]) * inputs.completion_mask
    )


def test_gae_estimator_whitens_advantages_and_returns_unwhitened_targets():
    inputs = _inputs()
    advantages, returns = GAE(gamma=0.9, lam=0.8)(inputs)
    raw, expected_returns = gae(
        inputs.token_rewards, inputs.values, inputs.completion_mask, 0.9, 0.8
    )
    assert torch.equal(returns, expected_returns)
    torch.testing.assert_close(
        advantages, whiten(raw, inputs.completion_mask) * inputs.completion_mask
    )
    plain, _ = GAE(gamma=0.9, lam=0.8, whiten_advantages=False)(inputs)
    assert torch.equal(plain, raw)
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
