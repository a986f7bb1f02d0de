"""Process supervision: map step ends given as character offsets to completion tokens."""

from collections.abc import Callable

import torch


def token_step_ends(
    completion_ids: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    char_ends: torch.Tensor,  # [N, S] long, exclusive character offsets, -1 = padding step
    decode: Callable[[list[int]], str],
) -> torch.Tensor:  # [N, S] long, completion-token index, -1 = padding step
    """The index of the token that holds each step's last character.

    A reward sees text; the advantage needs tokens. Token t covers the characters between
    ``len(decode(ids[:t]))`` and ``len(decode(ids[:t+1]))``, so a step ending (exclusively) at
    character c ends at the first token whose decoded prefix reaches c. Offsets past the text
    end at its last counted token.
    """
    token_ends = torch.full_like(char_ends, -1, dtype=torch.long)
    for row in range(completion_ids.shape[0]):
        valid = char_ends[row] >= 0
        if not valid.any():
            continue
        length = int(completion_mask[row].sum())
        ids = completion_ids[row, :length].tolist()
        prefix_chars = torch.tensor([len(decode(ids[: t + 1])) for t in range(length)])
        # Decoding a partial multi-byte character can shorten a prefix; keep it monotone.
        prefix_chars = prefix_chars.cummax(dim=0).values
        ends = torch.searchsorted(prefix_chars, char_ends[row].clamp(min=1)).clamp(max=length - 1)
        token_ends[row] = torch.where(valid, ends, -1)
    return token_ends
