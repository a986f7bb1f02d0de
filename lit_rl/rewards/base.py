"""What a reward returns, how it is called and checked, and a wrapper for plain functions.

A reward is any callable ``reward(prompts, completions, batch) -> RewardOutput`` (``RewardFn``):
``prompts[i]`` produced ``completions[i]``; ``batch[key][i]`` is that prompt's dataset field
``key`` (e.g. the reference ``"answer"``).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from lit_rl.errors import is_input_error

# Per-rollout dataset fields, each a list of N values (the prompt's fields repeated G times).
Batch = dict[str, list[Any]]


@dataclass
class RewardOutput:
    """What a reward returns for N completions.

    ``total`` is the outcome reward. A process reward (DeepSeekMath §4.1.3) also scores the
    reasoning steps of each completion: ``step_rewards[i, j]`` is the reward of step j of
    completion i and ``step_ends[i, j]`` where that step ends; rows with fewer steps are padded
    with ``step_ends = -1``. ``step_ends_in`` says in what: ``characters``, the exclusive
    offset in ``completions[i]`` (as in ``completion[start:end]``; the pipeline maps it to the
    completion token that holds the character), or ``tokens``, the completion-token index
    itself (a multi-turn episode's turns, ``TurnRewards``).
    """

    total: torch.Tensor  # [N] float32, the outcome reward
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], for logging
    step_rewards: torch.Tensor | None = None  # [N, S] float32
    step_ends: torch.Tensor | None = None  # [N, S] long, -1 = padding step
    step_ends_in: Literal["characters", "tokens"] = "characters"


@runtime_checkable
class ReadsFields(Protocol):
    """A reward that reads dataset fields by name (e.g. the reference answer): training checks
    them against the first batch before any model loads, instead of failing at the first
    rollout."""

    def fields(self) -> list[str]: ...


def reward_fields(reward: object) -> list[str]:
    """The dataset fields ``reward`` reads; ``[]`` for a reward that does not say."""
    return reward.fields() if isinstance(reward, ReadsFields) else []


# What configuration accepts as a reward. A Callable, not a Protocol: jsonargparse checks a
# Protocol by exact annotations, which would refuse a user's reward written without type hints;
# a Callable type accepts any class_path whose instances are callable.
RewardFn = Callable[[list[str], list[str], Batch], RewardOutput]


def reward_name(reward: object) -> str:
    return getattr(reward, "name", None) or type(reward).__name__


def check_reward_fields(reward: object, batch: dict[str, Any]) -> None:
    """The dataset fields ``reward`` reads (``ReadsFields``) must be in ``batch``, a training
    batch: checked before any model loads, not at the first rollout."""
    missing = [name for name in reward_fields(reward) if name not in batch]
    if missing:
        columns = sorted(key for key, value in batch.items() if isinstance(value, list))
        raise KeyError(
            f"reward '{reward_name(reward)}' reads the dataset field(s) {missing}, but "
            f"the training batches have {columns}: name the right column in the "
            "reward's settings (e.g. MathCorrectness answer_field), or add it to the data"
        )


def call_reward(
    reward: RewardFn, prompts: list[str], completions: list[str], batch: Batch, where: str
) -> RewardOutput:
    """``reward`` on N completions, its output checked (``check_reward_output``). ``where``
    names the batch in errors: a user's reward that fails is named with it (its traceback
    kept), lit_rl's own rewards refusing their input say it all themselves."""
    try:
        output = reward(prompts, completions, batch)
    except Exception as error:
        if is_input_error(error):
            raise
        raise RuntimeError(
            f"reward '{reward_name(reward)}' raised {type(error).__name__} on {where}: {error}"
        ) from error
    return check_reward_output(output, reward, len(completions), where)


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
            f"reward '{name}' gave step_ends that are not integer "
            f"{output.step_ends_in.removesuffix('s')} offsets (-1 = padding) for {where}"
        )
    if output.step_ends_in not in ("characters", "tokens"):
        raise ValueError(
            f"reward '{name}' gave step_ends_in={output.step_ends_in!r} for {where}; use "
            "'characters' or 'tokens'"
        )


class FunctionReward:
    """Wrap ``fn(prompts, completions, batch) -> list[float] | Tensor [N]`` as a Reward."""

    def __init__(
        self,
        # Any: jsonargparse would refuse a user's function that lacks a return annotation;
        # the values are checked when it is called.
        fn: Callable[[list[str], list[str], Batch], Any],
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
