"""TextArena's single-player games as lit_rl environments.

``TextArenaGame`` plays any single-player TextArena game by its env id (``GuessTheNumber-v0``,
``Mastermind-v0``, ``Sudoku-v0``, ...): the game's messages are the prompt and the
observations, the model's turns its moves, and the game's reward at its end the episode's.
The G episodes of a prompt play the same game (it is built and reset with the group's seed).
Install with ``pip install lit_rl[textarena]``.

TextArena reseeds Python's global ``random`` in every reset and draws from it while it plays.
Each game here keeps a generator of its own, swapped in for every call into TextArena and out
after it: a game is a function of its seed and the model's moves, however the episodes of a
rollout interleave, and nothing else in the process sees its draws.
"""

import random
from collections.abc import Callable
from typing import Any, TypeVar

from lit_rl.environments import Environment, Message, Row, StepResult, Turn
from lit_rl.integrations import missing

try:
    import textarena
    from textarena.core import ObservationType
    from textarena.envs.registration import ENV_REGISTRY
except ImportError as error:
    raise ImportError(missing("textarena", "textarena")) from error

T = TypeVar("T")
SYSTEM_PROMPT = (
    "You are playing a game. Read the rules, think briefly, then answer with your move in "
    "square brackets, e.g. [5]."
)


class TextArenaGame(Environment):
    """One single-player TextArena game per episode.

    The first messages: ``system_prompt`` (when set) and the game's opening text. Each turn's
    text is the move (TextArena reads what its rules say, e.g. the number in square brackets);
    the game's answer (its messages since the move, without the echo of the move) is the next
    observation. Reward: the game's own at its end (``close()``); a game lit_rl cut short is
    scored by the game's own measure of an unfinished game where it has one (the completion
    fraction most single-player games give when their own turn limit ends them), else 0.
    Logged: ``invalid_moves``.

    Args:
        env_id: the TextArena env id; its ``-raw`` registration is played (no wrappers: each
            observation is the game's new messages, not the whole history again).
        env_kwargs: the game's own settings (``textarena.make(env_id, **env_kwargs)``).
        system_prompt: a system message before the game's text; ``None``: none.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        raw = env_id if env_id.endswith("-raw") else f"{env_id}-raw"
        if raw not in ENV_REGISTRY:
            known = sorted(name for name in ENV_REGISTRY if not name.endswith(("-raw", "-train")))
            raise ValueError(
                f"TextArena has no game '{env_id}': use one of its env ids, e.g. "
                f"{', '.join(known[:8])}, ... ({len(known)} in all)"
            )
        self.env_id, self.env_kwargs, self.system_prompt = (
            raw,
            dict(env_kwargs or {}),
            system_prompt,
        )
        self.game: Any = None
        self.random_state: object = None

    def reset(self, row: Row, seed: int) -> list[Message]:
        # Seeded before it is built as well: some games draw their puzzle in __init__.
        self.random_state = random.Random(seed % 2**31).getstate()
        self.game = self._in_own_random(lambda: textarena.make(self.env_id, **self.env_kwargs))
        self._in_own_random(lambda: self.game.reset(num_players=1, seed=seed % 2**31))
        first = [{"role": "user", "content": self._new_text()}]
        if self.system_prompt is not None:
            first.insert(0, {"role": "system", "content": self.system_prompt})
        return first

    def step(self, turn: Turn) -> StepResult:
        done, info = self._in_own_random(lambda: self.game.step(turn.text))
        text = self._new_text()
        invalid = float("invalid move" in text.lower())
        if not done:
            return StepResult(
                [{"role": "user", "content": text}], metrics={"invalid_moves": invalid}
            )
        rewards, _ = self._in_own_random(self.game.close)
        reward = float(rewards[0]) if rewards else 0.0
        return StepResult(reward=reward, done=True, metrics={"invalid_moves": invalid})

    def truncate(self) -> StepResult:
        # TextArena has no public score of an unfinished game; most single-player games
        # define the one they give when their own turn limit ends them.
        progress: Callable[[], float] | None = getattr(
            self.game, "_get_percentage_completion", None
        )
        reward = float(self._in_own_random(progress)) if progress is not None else 0.0
        return StepResult(reward=reward, metrics={"unfinished": 1.0})

    def _new_text(self) -> str:
        """The game's messages since the last call, the echo of the model's move left out."""
        _, observations = self._in_own_random(self.game.get_observation)
        return "\n".join(
            text for _, text, kind in observations if kind != ObservationType.PLAYER_ACTION
        )

    def _in_own_random(self, call: Callable[[], T]) -> T:
        """``call()`` with Python's global ``random`` in this game's own state; the global
        state as it was afterwards."""
        outside = random.getstate()
        random.setstate(self.random_state)
        try:
            return call()
        finally:
            self.random_state = random.getstate()
            random.setstate(outside)
