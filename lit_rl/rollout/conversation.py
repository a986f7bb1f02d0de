"""Conversation: the model as a loop environment awaits it, token in, token out.

A loop environment (verifiers' ``Env.run``, an agent harness, a game loop) hands the model the
whole conversation every call. Re-rendering it would make the trainer score other tokens than
were sampled, so the conversation is checked to extend the last one (the previous messages,
then the model's turn as sampled) and only the new messages are rendered and appended, as a
step environment's observation is.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from lit_rl.environments import ChatRenderer, EpisodeTruncated, Message, Turn
from lit_rl.rollout.turns import EpisodeTokens

NextTurn = Callable[[EpisodeTokens], Awaitable[Turn]]  # the batcher's turn for this episode
# Begins an episode with its first messages, rendered (checked against the model's context).
Start = Callable[[EpisodeTokens, list[int], list[Message]], None]
# Appends an observation's messages after a turn (stopped or not); whether a turn still fits.
Observe = Callable[[EpisodeTokens, list[Message], bool], bool]


class Conversation:
    """One episode's ``lit_rl.environments.Model``.

    Args:
        episode: the episode's tokens, which every call extends.
        renderer: renders the first messages as the prompt.
        start: begins the episode with them.
        observe: appends the new messages of a later call within the episode's budgets.
        next_turn: samples the model's turn.
    """

    def __init__(
        self,
        episode: EpisodeTokens,
        renderer: ChatRenderer,
        start: Start,
        observe: Observe,
        next_turn: NextTurn,
    ) -> None:
        self.episode = episode
        self.renderer = renderer
        self.start = start
        self.observe = observe
        self.next_turn = next_turn
        self.history: list[Message] = []  # the messages so far, with the last turn
        self.last_turn: Turn | None = None  # None until the first call
        self.truncated = False

    async def __call__(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> Turn:
        if self.truncated:
            raise EpisodeTruncated("this episode's turn or token budget is spent")
        if self.last_turn is None:  # the first call: its messages are the prompt
            self.start(self.episode, self.renderer.prompt(messages, tools), messages)
        elif not self.observe(self.episode, self._new_messages(messages), self.last_turn.stopped):
            self.truncated = True
            raise EpisodeTruncated("this episode's turn or token budget is spent")
        turn = await self.next_turn(self.episode)
        self.history = [*messages, {"role": "assistant", "content": turn.text}]
        self.last_turn = turn
        return turn

    def _new_messages(self, messages: list[Message]) -> list[Message]:
        """What ``messages`` add to the conversation so far; refuses one whose past changed."""
        for index, (had, has) in enumerate(zip(self.history, messages, strict=False)):
            if (had.get("role"), had.get("content")) != (has.get("role"), has.get("content")):
                raise ValueError(
                    f"the environment's conversation changed message {index} since the model's "
                    f"last turn ({_short(had)} became {_short(has)}): lit_rl keeps an episode's "
                    "tokens as sampled, so a call must pass the previous messages and the "
                    "model's turn (role 'assistant', content turn.text) unchanged, then the "
                    "new ones"
                )
        if len(messages) < len(self.history):
            raise ValueError(
                f"the environment passed {len(messages)} messages, fewer than the "
                f"{len(self.history)} of the conversation so far (with the model's turn): a "
                "call extends the conversation, it never drops messages"
            )
        return messages[len(self.history) :]


def _short(message: Message) -> str:
    content = str(message.get("content"))
    return f"{message.get('role')}: {content[:40]!r}{'...' if len(content) > 40 else ''}"
