"""StopStrings: strings that end a completion as its EOS does (a tool call's closing tag, an
environment's action delimiter), found in the text of the sampled ids.

The rule, the same for every engine and for the mask the trainer reads: a completion ends with
the first token whose text completes a stop string. That token is kept whole, as sampled (it
may run past the string: the ids are never cut or re-tokenized), and so are the tokens before
it; nothing after it is sampled.
"""

from collections.abc import Callable

Decode = Callable[[list[int]], str]  # token ids -> text (special tokens skipped)
# Tokens of context decoded around the newest one: a stop string is matched in the text of the
# last few tokens only (linear in the completion's length), which holds a string this many
# tokens long at least (one character per token at the fewest, a few more for byte pieces).
_SLACK = 4


class StopStrings:
    """Finds where the first of ``strings`` is completed in a completion's ids.

    Args:
        strings: the stop strings (each non-empty).
        decode: the tokenizer's decode, as the reward sees completions.
    """

    def __init__(self, strings: tuple[str, ...], decode: Decode) -> None:
        if not strings or any(not s for s in strings):
            raise ValueError(f"stop strings must be non-empty strings, got {list(strings)}")
        self.strings = strings
        self.decode = decode
        self.window = max(len(s) for s in strings) + _SLACK

    def completed_by_last(self, ids: list[int]) -> bool:
        """Whether ``ids``' last token completes a stop string (its text holds one that the
        text before that token did not). Only the last ``window`` ids are read."""
        if not ids:
            return False
        tail = ids[-self.window :]
        text, before = self.decode(tail), self.decode(tail[:-1])
        return any(s in text and s not in before for s in self.strings)

    def end(self, ids: list[int]) -> int | None:
        """The number of tokens the completion keeps: up to and including the first token that
        completes a stop string; ``None`` when none does."""
        for length in range(1, len(ids) + 1):
            if self.completed_by_last(ids[max(0, length - self.window) : length]):
                return length
        return None
