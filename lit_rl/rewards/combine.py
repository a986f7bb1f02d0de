"""A weighted sum of rewards, keeping every component for logging."""

import torch

from lit_rl.rewards.base import Batch, RewardFn, RewardOutput, check_reward_output, reward_fields


class WeightedSum:
    """``total = sum_k weights[k] * rewards[k].total``; components are kept under their names."""

    def __init__(
        self,
        rewards: list[RewardFn],
        weights: list[float] | None = None,
        name: str = "weighted_sum",
    ) -> None:
        weights = [1.0] * len(rewards) if weights is None else weights
        if not rewards or len(weights) != len(rewards):
            raise ValueError(
                f"WeightedSum needs one weight per reward: got {len(rewards)} rewards "
                f"and {len(weights)} weights"
            )
        self.rewards = rewards
        self.weights = weights
        self.name = name

    def fields(self) -> list[str]:
        return sorted({field for reward in self.rewards for field in reward_fields(reward)})

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        total = torch.zeros(len(completions))
        components: dict[str, torch.Tensor] = {}
        for reward, weight in zip(self.rewards, self.weights, strict=True):
            output = check_reward_output(
                reward(prompts, completions, batch), reward, len(completions), "a WeightedSum term"
            )
            total = total + weight * output.total
            for key, values in output.components.items():
                if key in components:
                    raise ValueError(
                        f"two rewards in WeightedSum log a component named '{key}': "
                        "give them distinct `name`s"
                    )
                components[key] = values
        return RewardOutput(total=total, components=components)
