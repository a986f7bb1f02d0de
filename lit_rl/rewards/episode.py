"""The rewards an environment gave its episodes, as a module's reward: their sum per episode
(``EpisodeReward``, an outcome), or each turn's on that turn's last sampled token
(``TurnRewards``, trained through the step-reward path of process supervision).

``lit_rl.rollout.EpisodeSampler`` puts them in the batch as the fields named here.
"""

import torch

from lit_rl.rewards.base import Batch, RewardOutput

EPISODE_REWARD = "episode_reward"  # [N] floats: every reward of the episode, summed
TURN_REWARDS = "turn_rewards"  # [N] lists: each model turn's reward
TURN_ENDS = "turn_ends"  # [N] lists: the completion-token index of each turn's last token


def _episode_field(batch: Batch, name: str, reward: str) -> list:
    if name not in batch:
        raise KeyError(
            f"{reward} reads the environment's rewards of each episode, but these rollouts "
            "are single completions: set the module's episodes (an environment), or use a "
            "reward that scores the completion"
        )
    return batch[name]


class EpisodeReward:
    """The reward the environment gave each episode (its turns' rewards summed), for the
    module's ``reward``; combine it with others in ``lit_rl.rewards.WeightedSum``."""

    name = "environment"

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        values = torch.tensor(
            _episode_field(batch, EPISODE_REWARD, "EpisodeReward"), dtype=torch.float32
        )
        return RewardOutput(total=values, components={self.name: values})


class TurnRewards:
    """Each turn's reward where the turn ends: step rewards (``RewardOutput.step_rewards``) on
    the completion tokens that end the model's turns, for GRPO's process supervision
    (``lit_rl.experience.ProcessSupervised``: every turn's reward normalised over all turns of
    the group, and token t credited with the rewards of its turn and the turns after it).
    ``total`` is the episode's sum, as ``EpisodeReward`` gives it, for outcome estimators,
    logging and evaluation.

    A reward the environment gave after the last turn (a truncated episode's score) is on the
    last turn; one of an episode without a turn is in the total only.
    """

    name = "environment"

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        rewards = _episode_field(batch, TURN_REWARDS, "TurnRewards")
        ends = _episode_field(batch, TURN_ENDS, "TurnRewards")
        total = torch.tensor(
            _episode_field(batch, EPISODE_REWARD, "TurnRewards"), dtype=torch.float32
        )
        width = max(1, max((len(row) for row in ends), default=0))
        step_rewards = torch.zeros(len(ends), width)
        step_ends = torch.full((len(ends), width), -1, dtype=torch.long)
        for i, (row_rewards, row_ends) in enumerate(zip(rewards, ends, strict=True)):
            step_rewards[i, : len(row_rewards)] = torch.tensor(row_rewards, dtype=torch.float32)
            step_ends[i, : len(row_ends)] = torch.tensor(row_ends, dtype=torch.long)
        return RewardOutput(
            total,
            {self.name: total},
            step_rewards=step_rewards,
            step_ends=step_ends,
            step_ends_in="tokens",
        )
