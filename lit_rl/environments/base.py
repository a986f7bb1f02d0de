"""What an environment is: it starts an episode from a dataset row, answers each of the model's
turns with observation messages, an optional reward and whether the episode is done.

A researcher subclasses ``Environment`` (or ``AsyncEnvironment`` when answering waits on I/O: a
sandbox, a web tool, another model) and names it by ``class_path`` in a recipe; every episode
gets its own instance, so the G episodes of one prompt never share state.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}, as chat templates read them
Row = dict[str, Any]  # a dataset row: the datamodule's fields (e.g. "prompt", "answer")


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for in its turn."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Turn:
    """The model's turn, as sampled: its text (special tokens skipped), the tool calls a
    ``ToolCallParser`` found in it and the calls it could not read (each a message saying
    why, to answer the model with)."""

    text: str
    index: int  # 0 for the episode's first turn
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_errors: list[str] = field(default_factory=list)
    stopped: bool = True  # False when the turn ran out of tokens before its EOS


@dataclass(frozen=True)
class StepResult:
    """An environment's answer to one turn.

    ``observation`` is appended to the conversation for the model's next turn (ignored when the
    episode ends); ``reward`` adds to the episode's reward; ``metrics`` add up over the episode
    and are logged as ``rollout/episode/<name>`` (e.g. ``tool_calls``, ``tool_errors``).
    """

    observation: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


class Environment(ABC):
    """A synchronous environment: one instance per episode.

    ``reset`` gets the dataset row and a seed drawn from the rollout's RNG (so a resumed run
    replays the same episodes) and returns the first messages, which the chat template renders
    as the prompt. ``step`` answers the model's turn. ``close`` frees what the episode held; ``tool_schemas``
    says which tools the chat template should show.
    """

    @abstractmethod
    def reset(self, row: Row, seed: int) -> list[Message]: ...

    @abstractmethod
    def step(self, turn: Turn) -> StepResult: ...

    def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Nothing to free by default."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The JSON schemas of the tools the model may call (``Tools.schemas``), passed to the
        chat template with the first messages (a template with a tool format shows them);
        none by default."""
        return []


class AsyncEnvironment(ABC):
    """An environment whose answers are awaited: the turns of all live episodes are answered
    concurrently on one event loop. The same contract as ``Environment``."""

    @abstractmethod
    async def reset(self, row: Row, seed: int) -> list[Message]: ...

    @abstractmethod
    async def step(self, turn: Turn) -> StepResult: ...

    async def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Nothing to free by default."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """As ``Environment.tool_schemas``."""
        return []
