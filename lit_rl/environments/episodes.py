"""``Episodes``: the settings of multi-turn rollouts."""

from collections.abc import Callable
from dataclasses import dataclass

from lit_rl.environments.base import AsyncEnvironment, Environment, LoopEnvironment
from lit_rl.environments.parsers import ParsedCalls


@dataclass(frozen=True)
class Episodes:
    """Rollouts as multi-turn episodes against an environment (``lit_rl.rollout.EpisodeSampler``).

    Every budget is in tokens and counts the same tokens everywhere: the episode is everything
    after its first prompt, the model's turns and the environment's answers alike.

    Args:
        environment: makes one environment per episode (a ``class_path`` with its
            ``init_args``); the G episodes of a prompt are G instances.
        max_turns: the model's turns per episode at most; an episode the environment has not
            ended by then is truncated.
        max_episode_tokens: tokens after the first prompt at most. Each turn samples at most
            the smaller of ``max_completion_length`` and what remains; an observation that
            reaches the budget is cut there and ends the episode (truncated).
        max_observation_tokens: each observation message's content is cut to this many tokens
            (``None``: not cut); logged as ``rollout/episode/observations_cut``.
        tool_parser: reads tool calls out of each turn for the environment
            (``lit_rl.environments.HermesToolCalls``, ``TagToolCalls``); ``None``: the
            environment reads the turn's text itself.
    """

    environment: Callable[[], Environment | AsyncEnvironment | LoopEnvironment]
    max_turns: int = 4
    max_episode_tokens: int = 1024
    max_observation_tokens: int | None = 256
    tool_parser: Callable[[str], ParsedCalls] | None = None

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_episode_tokens < 1:
            raise ValueError(
                "Episodes: max_turns and max_episode_tokens must be >= 1, got "
                f"{self.max_turns} and {self.max_episode_tokens}"
            )
        if self.max_observation_tokens is not None and self.max_observation_tokens < 1:
            raise ValueError(
                f"Episodes.max_observation_tokens must be >= 1 or None, got "
                f"{self.max_observation_tokens}"
            )
