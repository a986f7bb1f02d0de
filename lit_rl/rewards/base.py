"""The Reward protocol, its output, output validation, and a wrapper for plain functions."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

# Per-rollout dataset fields, each a list of N values (the prompt's fields repeated G times).
Batch = dict[str, list[Any]]


@dataclass
class RewardOutput:
    """What a reward returns for N completions.

    ``total`` is the outcome reward. A process reward (DeepSeekMath §4.1.3) also scores the
    reasoning steps of each completion: ``step_rewards[i, j]`` is the reward of step j of
    completion i and ``step_ends[i, j]`` the character offset in ``completions[i]`` where that
    step ends (exclusive, as in ``completion[start:end]``); rows with fewer steps are padded
    with ``step_ends = -1``. The pipeline maps the offsets to completion tokens.
    """

    total: torch.Tensor  # [N] float32, the outcome reward
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], for logging
    step_rewards: torch.Tensor | None = None  # [N, S] float32
    step_ends: torch.Tensor | None = None  # [N, S] long, character offsets, -1 = padding step


@runtime_checkable
class Reward(Protocol):
    """Scores N completions. ``prompts[i]`` produced ``completions[i]``; ``batch[key][i]`` is
    that prompt's dataset field ``key`` (e.g. the reference ``"answer"``)."""

    def __call__(
        self, prompts: list[str], completions: list[str], batch: Batch
    ) -> RewardOutput: ...


@runtime_checkable
class ReadsFields(Protocol):
    """A reward that reads dataset fields by name (e.g. the reference answer): training checks
    them against the first batch before any model loads, instead of failing at the first
    rollout."""

    def fields(self) -> list[str]: ...


def reward_fields(reward: object) -> list[str]:
    """The dataset fields ``reward`` reads; ``[]`` for a reward that does not say."""
    return reward.fields() if isinstance(reward, ReadsFields) else []


# What configuration accepts as a reward: any callable of the Reward shape. jsonargparse checks
# a Protocol by exact annotations, which would refuse a user's reward written without type
# hints; a Callable type accepts any class_path whose instances are callable.
RewardFn = Callable[[list[str], list[str], Batch], RewardOutput]


def reward_name(reward: object) -> str:
    return getattr(reward, "name", None) or type(reward).__name__


def as_reward_tensor(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).detach().cpu()


def check_reward_output(
    output: object, reward: object, num_completions: int, where: str
) -> RewardOutput:
    """Fail loudly, naming the reward and the batch, on a wrong type, shape, NaN or inf."""
    name = reward_name(reward)
    if not isinstance(output, RewardOutput):
        raise TypeError(
            f"reward '{name}' returned {type(output).__name__} for {where}; "
            "a Reward must return RewardOutput(total=[N] tensor, components={...}) "
            "(wrap plain functions in lit_rl.rewards.FunctionReward)"
        )
    for key, values in {"total": output.total, **output.components}.items():
        if not isinstance(values, torch.Tensor):
            raise TypeError(
                f"reward '{name}' gave '{key}' as {type(values).__name__} for {where}; "
                f"RewardOutput holds tensors: torch.tensor(values) of shape ({num_completions},)"
            )
        if values.shape != (num_completions,):
            raise ValueError(
                f"reward '{name}' gave '{key}' of shape {tuple(values.shape)} for {where}; "
                f"expected ({num_completions},): one value per completion"
            )
        bad = ~torch.isfinite(values)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise ValueError(
                f"reward '{name}' gave non-finite '{key}' ({values[first].item()}) for "
                f"completion {first} of {where}; return finite numbers (e.g. 0.0 for "
                "an unparseable answer)"
            )
    _check_steps(output, name, num_completions, where)
    return output


def _check_steps(output: RewardOutput, name: str, num_completions: int, where: str) -> None:
    if (output.step_rewards is None) != (output.step_ends is None):
        raise ValueError(
            f"reward '{name}' gave step_rewards without step_ends (or the reverse) for {where}; "
            "a process reward returns both, [N, S] each"
        )
    if output.step_rewards is None:
        return
    rewards, ends = output.step_rewards, output.step_ends
    if rewards.dim() != 2 or rewards.shape != ends.shape or rewards.shape[0] != num_completions:
        raise ValueError(
            f"reward '{name}' gave step_rewards {tuple(rewards.shape)} and step_ends "
            f"{tuple(ends.shape)} for {where}; expected both ({num_completions}, S)"
        )
    if not torch.isfinite(rewards[ends >= 0]).all():
        raise ValueError(f"reward '{name}' gave non-finite step_rewards for {where}")
    if ends.dtype.is_floating_point or (ends < -1).any():
        raise ValueError(
            f"reward '{name}' gave step_ends that are not integer character offsets "
            f"(-1 = padding) for {where}"
        )


class FunctionReward:
    """Wrap ``fn(prompts, completions, batch) -> list[float] | Tensor [N]`` as a Reward."""

    def __init__(
        self,
        fn: Callable[[list[str], list[str], Batch], Sequence[float] | torch.Tensor],
        name: str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        values = self.fn(prompts, completions, batch)
        try:
            total = as_reward_tensor(values)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"reward function '{self.name}' must return a list or tensor of "
                f"numbers, got {type(values).__name__}: {err}"
            ) from err
        return RewardOutput(total=total, components={self.name: total})


Step = tuple[float, int]  # (reward of a step, exclusive character offset where it ends)


def steps_output(
    total: torch.Tensor, steps: list[list[Step]], components: dict[str, torch.Tensor]
) -> RewardOutput:
    """A process reward's output from each completion's list of steps, padded to [N, S]
    (``step_ends = -1`` past a completion's last step)."""
    width = max(1, max(len(row) for row in steps))
    step_rewards = torch.zeros(len(steps), width)
    step_ends = torch.full((len(steps), width), -1, dtype=torch.long)
    for i, row in enumerate(steps):
        for j, (reward, end) in enumerate(row):
            step_rewards[i, j], step_ends[i, j] = reward, end
    return RewardOutput(total, components, step_rewards=step_rewards, step_ends=step_ends)
