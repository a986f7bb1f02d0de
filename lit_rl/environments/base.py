"""What an environment is, in two forms.

A **step** environment (``Environment``, or ``AsyncEnvironment`` when answering waits on I/O: a
sandbox, a web tool, another model) starts an episode from a dataset row and answers each of
the model's turns with observation messages, an optional reward and whether the episode is
done; lit_rl runs the loop. A **loop** environment (``LoopEnvironment``) runs the episode
itself and awaits the model (``await model(messages)``), the way verifiers' ``Env.run``, agent
harnesses and game loops do; lit_rl keeps the tokens as sampled either way.

A researcher subclasses one and names it by ``class_path`` in a recipe. Every episode gets its
own instance; the G episodes of one prompt get the same seed, so a seeded environment poses
them the same problem (GRPO's group baseline compares like with like) and they differ in what
the model samples.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    # True when the turn ended with its EOS; False when it ran out of tokens or ended at a stop
    # string (the chat template's closing is then written after it)
    stopped: bool = True


@dataclass(frozen=True)
class StepResult:
    """An environment's answer to one turn.

    ``observation`` is appended to the conversation for the model's next turn (ignored when the
    episode ends); ``reward`` is the turn's (on its last sampled token; the episode's reward is
    the sum); ``metrics`` add up over the episode and are logged as ``rollout/episode/<name>``
    (e.g. ``tool_calls``, ``tool_errors``).
    """

    observation: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


class Environment(ABC):
    """A synchronous step environment: one instance per episode.

    ``reset`` gets the dataset row and the group's seed (drawn from the rollout's RNG, so a
    resumed run replays the same episodes; the same for the G episodes of a prompt) and returns
    the first messages, which the chat template renders as the prompt. ``step`` answers the
    model's turn; its reward lands on that turn's last sampled token. ``truncate`` scores an
    episode that lit_rl ended first (the turn cap or the token budget). ``close`` frees what
    the episode held; ``tool_schemas`` says which tools the chat template should show.
    """

    @abstractmethod
    def reset(self, row: Row, seed: int) -> list[Message]: ...

    @abstractmethod
    def step(self, turn: Turn) -> StepResult: ...

    def truncate(self) -> StepResult:
        """The episode ran out of turns or tokens before ``step`` said done: its reward as it
        stands (added to the last turn's) and metrics; ``observation`` and ``done`` are not
        read. No reward by default."""
        return StepResult()

    def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Nothing to free by default."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The JSON schemas of the tools the model may call (``Tools.schemas``), passed to the
        chat template with the first messages (a template with a tool format shows them);
        none by default."""
        return []


class AsyncEnvironment(ABC):
    """A step environment whose answers are awaited: the episodes run concurrently on one
    event loop that lives for the whole rollout (a task started in ``reset`` is alive in
    ``step``). The same contract as ``Environment``."""

    @abstractmethod
    async def reset(self, row: Row, seed: int) -> list[Message]: ...

    @abstractmethod
    async def step(self, turn: Turn) -> StepResult: ...

    async def truncate(self) -> StepResult:
        """As ``Environment.truncate``."""
        return StepResult()

    async def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Nothing to free by default."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """As ``Environment.tool_schemas``."""
        return []


class EpisodeTruncated(Exception):
    """Raised by ``Model.__call__`` when lit_rl has ended the episode (the turn cap or the
    token budget): a ``LoopEnvironment`` catches it to score the episode as it stands."""


class Model(Protocol):
    """The policy as a ``LoopEnvironment`` sees it: the conversation so far in, the model's
    next turn out.

    The first call's messages are the prompt (rendered with ``tools`` by the chat template).
    Every later call passes the previous call's messages, the model's turn as an assistant
    message whose content is ``turn.text``, and the new messages (observations, tool results):
    only those are rendered and appended, so the tokens stay as sampled; a conversation whose
    past changed is refused. Raises ``EpisodeTruncated`` once the episode's budget is spent.
    """

    async def __call__(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> Turn: ...


@dataclass(frozen=True)
class EpisodeResult:
    """A ``LoopEnvironment``'s account of its episode.

    ``turn_rewards`` (one per model call, or ``None``: none) land on each turn's last sampled
    token; ``reward`` is added to the last turn's. ``metrics`` are logged as
    ``rollout/episode/<name>``.
    """

    reward: float = 0.0
    turn_rewards: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class LoopEnvironment(ABC):
    """An environment that owns its loop: ``run`` plays one episode from the dataset row and
    the group's seed, awaiting ``model`` for each of the model's turns, and returns the
    episode's rewards. One instance per episode; every episode's ``run`` is a task on the
    rollout's one event loop, and the engine samples the turns of all episodes waiting on
    the model in one batch."""

    @abstractmethod
    async def run(self, row: Row, seed: int, model: Model) -> EpisodeResult: ...

    async def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Nothing to free by default."""
