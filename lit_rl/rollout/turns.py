"""An episode's tokens as they grow, and the batching of the model's turns across the episodes of
a rollout.

Every episode of a rollout is a task on one event loop (``EpisodeSampler``): a step
environment's loop run by lit_rl, or a loop environment's own ``run``. A task that needs the
model's next turn waits in ``TurnBatcher.turn``; once every live episode is waiting (or done),
the batcher samples all their turns as one engine batch, in episode order. Batches are
therefore the same whatever the environments await in between (I/O, timers), which keeps a
rollout reproducible from its seed.
"""

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from lit_rl.environments import Message, Turn


@dataclass
class EpisodeTokens:
    """One episode's tokens as they grow: the first prompt, then the model's turns (sampled)
    and the environment's answers; each turn's reward sits on its last sampled token."""

    prompt: list[int] = field(default_factory=list)
    prompt_text: str = ""  # the last of the first messages' content, for rewards and panels
    ids: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # index in ids of each turn's last token
    turn_rewards: list[float] = field(default_factory=list)
    reward: float = 0.0  # every reward the environment gave, summed
    done: bool = False  # the environment ended the episode (else lit_rl truncated it)
    last_text: str = ""
    metrics: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def turns(self) -> int:
        return len(self.turn_ends)

    def start(self, prompt: list[int], messages: list[Message]) -> None:
        """The episode's first ``messages``, rendered as ``prompt``."""
        self.prompt = prompt
        self.prompt_text = str(messages[-1]["content"]) if messages else ""

    def append(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.sampled += [sampled] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)

    def add_turn(self, ids: list[int], logprobs: list[float], text: str) -> None:
        """The model's turn, as sampled (at least one token)."""
        if not ids:
            raise RuntimeError("the engine sampled no token for a turn with room for one")
        self.append(ids, True, logprobs)
        self.turn_ends.append(len(self.ids) - 1)
        self.turn_rewards.append(0.0)
        self.last_text = text

    def add_reward(self, reward: float, metrics: dict[str, float]) -> None:
        """A reward for the last turn (an episode without a turn has nowhere to put it but the
        episode's sum), and metrics that add up over the episode."""
        self.reward += float(reward)
        if self.turn_rewards:
            self.turn_rewards[-1] += float(reward)
        for name, value in metrics.items():
            self.metrics[name] += float(value)


SampleTurns = Callable[[list[EpisodeTokens]], list[Turn]]


class TurnBatcher:
    """Answers every episode's ``await turn(index, episode)`` with the model's next turn,
    sampled by ``sample_turns`` for all waiting episodes at once when no live episode is
    doing anything else.

    Args:
        sample_turns: samples one turn for each episode given (in order), appends it to the
            episode and returns the ``Turn``s.
    """

    def __init__(self, sample_turns: SampleTurns) -> None:
        self.sample_turns = sample_turns
        self.waiting: dict[int, tuple[EpisodeTokens, asyncio.Future[Turn]]] = {}
        self.changed = asyncio.Event()

    async def turn(self, index: int, episode: EpisodeTokens) -> Turn:
        """Episode ``index``'s next turn, once the batch it joins is sampled."""
        if index in self.waiting:
            raise RuntimeError(
                f"episode {index} asked the model for a turn while it waits for one: an "
                "environment awaits one model call at a time per episode"
            )
        future: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        self.waiting[index] = (episode, future)
        self.changed.set()
        return await future

    async def serve(self, plays: list[Coroutine[Any, Any, None]]) -> None:
        """Run the episodes' coroutines to their end, sampling their turns in batches; the
        first exception of any episode stops them all and is raised."""
        tasks = [asyncio.create_task(play) for play in plays]
        for task in tasks:
            task.add_done_callback(lambda _: self.changed.set())
        try:
            while True:
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()
                live = sum(not task.done() for task in tasks)
                if live == 0:
                    return
                if len(self.waiting) == live:  # nobody can move until the model answers
                    self._answer_waiting()
                    continue
                self.changed.clear()
                await self.changed.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _answer_waiting(self) -> None:
        order = sorted(self.waiting)
        waiting = [self.waiting.pop(index) for index in order]
        turns = self.sample_turns([episode for episode, _ in waiting])
        for (_, future), turn in zip(waiting, turns, strict=True):
            future.set_result(turn)
