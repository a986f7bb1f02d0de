"""The rewards an environment gave its episodes: summed (EpisodeReward) or per turn, on the
token where each turn ends (TurnRewards), read from the fields EpisodeSampler writes."""

import pytest
import torch

from lit_rl.rewards import (
    EPISODE_REWARD,
    TURN_ENDS,
    TURN_REWARDS,
    EpisodeReward,
    RewardOutput,
    TurnRewards,
    check_reward_output,
)

# Three episodes: two turns (rewards .5 then 1, ending at tokens 3 and 9), one turn, none.
BATCH = {
    EPISODE_REWARD: [1.5, -1.0, 2.0],
    TURN_REWARDS: [[0.5, 1.0], [-1.0], []],
    TURN_ENDS: [[3, 9], [4], []],
}


def test_turn_rewards_are_step_rewards_at_the_turns_last_tokens():
    output = TurnRewards()(["p"] * 3, ["c"] * 3, BATCH)
    check_reward_output(output, TurnRewards(), 3, "a batch")
    assert output.total.tolist() == [1.5, -1.0, 2.0]  # the sum, as EpisodeReward gives it
    assert output.step_rewards.tolist() == [[0.5, 1.0], [-1.0, 0.0], [0.0, 0.0]]
    assert output.step_ends.tolist() == [[3, 9], [4, -1], [-1, -1]]  # -1: no such turn
    assert output.step_ends_in == "tokens"


def test_episode_reward_is_the_sum():
    output = EpisodeReward()(["p"] * 3, ["c"] * 3, BATCH)
    assert output.total.tolist() == [1.5, -1.0, 2.0]
    assert output.components["environment"].tolist() == [1.5, -1.0, 2.0]


@pytest.mark.parametrize("reward", [EpisodeReward(), TurnRewards()])
def test_the_episode_rewards_need_episodes(reward):
    with pytest.raises(KeyError, match="these rollouts are single completions"):
        reward(["p"], ["c"], {"answer": ["1"]})


def test_step_ends_in_an_unknown_unit_are_refused():
    output = RewardOutput(
        torch.zeros(1),
        step_rewards=torch.zeros(1, 1),
        step_ends=torch.zeros(1, 1, dtype=torch.long),
        step_ends_in="words",  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="step_ends_in='words'.*'characters' or 'tokens'"):
        check_reward_output(output, TurnRewards(), 1, "a batch")
