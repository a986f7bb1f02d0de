"""Step ends: character offsets to completion tokens, in linear time, on a character tokenizer
and on the embedded model's byte-level BPE; the last step of a stopped completion ends at EOS."""

import pytest
import torch

from lit_rl.experience import token_char_ends, token_step_ends
from lit_rl.models import load_tokenizer
from tests.conftest import build_tokenizer

# Multi-character tokens, leading spaces, digits split one per token, unicode of 2-4 UTF-8
# bytes (byte-level BPE splits the emoji over several tokens), newlines, CJK.
BPE_TEXTS = [
    "Ava has 12 apples and gets 7 more: 12 + 7 = 19.\nAnswer: 19",
    "Café costs 3 × 4 = 12 € — déjà vu 🍎🍎 then 12 ÷ 3 = 4",
    "  leading spaces, tabs\tand 1,234,567 digits",
    "数学 问题: 2 + 2 = 4 ✓",
]


def _decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _first_token_reaching(ids: list[int], decode, char_end: int) -> int:
    """The definition, by brute force: the first token whose decoded prefix (its complete
    characters) reaches char_end."""
    for t in range(len(ids)):
        if len(decode(ids[: t + 1]).rstrip("\ufffd")) >= char_end:
            return t
    return len(ids) - 1


def test_char_tokenizer_steps_end_at_their_last_character_and_the_last_at_eos():
    tokenizer = build_tokenizer()  # one token per character, special tokens decode to ""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    text_ids = tokenizer("ab<|im_start|>cd", add_special_tokens=False).input_ids
    assert len(text_ids) == 5
    # Row 0 stopped (EOS after "abcd"), row 1 was truncated after "abcd".
    ids = torch.tensor([text_ids + [eos, pad], text_ids + [pad, pad]])
    mask = torch.tensor([[True] * 6 + [False], [True] * 5 + [False] * 2])
    stopped = torch.tensor([True, False])
    # "ab" ends at token 1; "abc" at token 3 (after the empty special token); "abcd" is the
    # last step: at the EOS (token 5) when the row stopped, at "d" (token 4) when truncated;
    # past the text -> the last counted token; -1 stays padding.
    char_ends = torch.tensor([[2, 3, 4, -1], [2, 3, 99, -1]])
    steps = token_step_ends(ids, mask, char_ends, ["abcd", "abcd"], stopped, _decoder(tokenizer))
    assert steps.tolist() == [[1, 3, 5, -1], [1, 3, 4, -1]]
    # A stopped row whose steps end before its text does: the tail joins the last step.
    steps = token_step_ends(
        ids[:1], mask[:1], torch.tensor([[1, 2]]), ["abcd"], stopped[:1], _decoder(tokenizer)
    )
    assert steps.tolist() == [[0, 5]]


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer("embedded")


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_bpe_token_ends_equal_the_prefix_decode(bpe, text):
    ids = bpe(text, add_special_tokens=False).input_ids
    decode = _decoder(bpe)
    assert any(len(bpe.decode([i])) > 1 for i in ids)  # multi-character tokens
    ends = token_char_ends(ids, decode)
    assert ends[-1] == len(decode(ids)) == len(text)
    # Each token's end is where the decoded prefix stops growing past a complete character.
    for t, end in enumerate(ends):
        assert decode(ids[: t + 1]).rstrip("\ufffd") == text[:end]


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_bpe_step_ends_match_the_definition_at_every_character(bpe, text):
    decode = _decoder(bpe)
    ids = bpe(text, add_special_tokens=False).input_ids
    char_ends = torch.arange(1, len(text) + 1)[None, :]  # a step ending at every character
    mask = torch.ones(1, len(ids), dtype=torch.bool)
    steps = token_step_ends(
        torch.tensor([ids]), mask, char_ends, [text], torch.tensor([False]), decode
    )
    expected = [_first_token_reaching(ids, decode, c) for c in range(1, len(text) + 1)]
    assert steps[0].tolist() == expected


def test_step_ends_decode_a_bounded_window_per_token(bpe):
    """Linear time: the characters decoded grow with the completion, not with its square."""
    ids = bpe(" ".join(BPE_TEXTS) * 6, add_special_tokens=False).input_ids
    decoded = []

    def counting_decode(window: list[int]) -> str:
        decoded.append(len(window))
        return bpe.decode(window, skip_special_tokens=True)

    token_char_ends(ids, counting_decode)
    assert len(ids) > 400
    # Two decodes per token, each of a window of at most a few tokens (an emoji's bytes).
    assert len(decoded) == 2 * len(ids) and max(decoded) <= 6
    assert sum(decoded) < 8 * len(ids)


def test_a_decoder_that_rewrites_across_tokens_falls_back_to_prefix_decoding():
    tokenizer = build_tokenizer()

    def decode(ids: list[int]) -> str:
        # Not additive over tokens: the text depends on how many tokens are decoded at once.
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return text + "!" if len(ids) % 2 else text

    ids = tokenizer("abcd", add_special_tokens=False).input_ids
    text = decode(ids)  # "abcd"
    assert token_char_ends(ids, decode)[-1] != len(text)
    mask = torch.ones(1, len(ids), dtype=torch.bool)
    char_ends = torch.tensor([[1, 2, 3, 4]])
    steps = token_step_ends(
        torch.tensor([ids]), mask, char_ends, [text], torch.tensor([False]), decode
    )
    assert steps.tolist() == [[_first_token_reaching(ids, decode, c) for c in (1, 2, 3, 4)]]
