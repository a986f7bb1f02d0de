"""Process supervision: map step ends given as character offsets to completion tokens.

A process reward sees text and says where each step ends as a character offset; the advantage
needs the completion token that holds that character. The rule, in full:

- a step ending (exclusively) at character c ends at the first token whose text reaches c: the
  token holding the step's last character (a character split across tokens, as byte-level BPE
  splits emoji, belongs to the token that completes it);
- the last step of a completion that stopped ends at its EOS token, so the tokens after the
  last step's text and the EOS itself are credited with that step (stopping is reinforced);
  a truncated completion (no EOS) keeps its steps where their text ends;
- offsets past the text end at the last counted token; -1 stays a padding step.
"""

from collections.abc import Callable

import torch

Decode = Callable[[list[int]], str]  # token ids -> text, as the reward's texts were decoded
_PARTIAL = "\ufffd"  # what a decoder shows for the bytes of an incomplete character


def token_char_ends(ids: list[int], decode: Decode) -> list[int]:
    """The exclusive character end, in ``decode(ids)``, of each token's text: linear time.

    An incremental decode, as streaming detokenizers do: each token's text is the growth of the
    decode of a short window (the tokens of the text emitted last, then those since), so every
    token is decoded a bounded number of times instead of decoding every prefix. A token that
    ends inside a multi-byte character (its decode ends in U+FFFD) emits the complete characters
    before it; the character belongs to the token that completes it. A window that starts
    mid-text decodes its first token as the full decode does (SentencePiece's leading space is
    in the window's prefix, not in the new text).
    """
    ends: list[int] = []
    emitted = 0  # characters of text emitted so far
    prefix_start, read_end = 0, 0  # ids[prefix_start:read_end]: the window's emitted prefix
    pending = 0  # characters emitted past that prefix by tokens inside a character
    for t in range(len(ids)):
        prefix_text = decode(ids[prefix_start:read_end])
        window_text = decode(ids[prefix_start : t + 1])
        growth = len(window_text.rstrip(_PARTIAL)) - len(prefix_text) - pending
        if growth > 0:
            emitted += growth
            pending += growth
        if len(window_text) > len(prefix_text) and not window_text.endswith(_PARTIAL):
            prefix_start, read_end, pending = read_end, t + 1, 0
        ends.append(emitted)
    return ends


def _prefix_char_ends(ids: list[int], decode: Decode) -> list[int]:
    """``token_char_ends`` by decoding every prefix: quadratic, but exact for any decoder."""
    return [len(decode(ids[: t + 1]).rstrip(_PARTIAL)) for t in range(len(ids))]


def token_step_ends(
    completion_ids: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool, a prefix per row
    char_ends: torch.Tensor,  # [N, S] long, exclusive character offsets, -1 = padding step
    texts: list[str],  # N texts the reward scored: decode(counted ids) of each row
    stopped: torch.Tensor,  # [N] bool, the row's last counted token is an EOS
    decode: Decode,
) -> torch.Tensor:  # [N, S] long, completion-token index, -1 = padding step
    """The completion token where each step ends, by the module's rule (see above).

    Character ends come from ``token_char_ends``; a row whose incremental texts do not add up
    to the text the reward saw (a decoder that rewrites across tokens, e.g.
    ``clean_up_tokenization_spaces``) is mapped by decoding its prefixes instead.
    """
    token_ends = torch.full_like(char_ends, -1, dtype=torch.long)
    for row in range(completion_ids.shape[0]):
        valid = char_ends[row] >= 0
        if not valid.any():
            continue
        length = int(completion_mask[row].sum())
        ids = completion_ids[row, :length].tolist()
        token_chars = token_char_ends(ids, decode)
        if token_chars[-1] != len(texts[row]):
            token_chars = _prefix_char_ends(ids, decode)
        ends = torch.searchsorted(torch.tensor(token_chars), char_ends[row].clamp(min=1))
        ends = ends.clamp(max=length - 1)
        if stopped[row]:
            last = char_ends[row] == char_ends[row][valid].max()
            ends = torch.where(last, length - 1, ends)
        token_ends[row] = torch.where(valid, ends, -1)
    return token_ends
