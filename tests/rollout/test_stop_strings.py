"""Stop strings: a completion ends at the first token whose text completes one, that token kept
whole as sampled; every engine stops there and the sampler's mask reads the same rule; an
episode's turn that ends at one gets the chat template's closing after it."""

import pytest
import torch

from lit_rl.environments import Episodes
from lit_rl.models import load_model, load_tokenizer
from lit_rl.rollout import (
    CompletionSampler,
    HFGenerateEngine,
    PackedEngine,
    SamplingParams,
    StopStrings,
)
from tests.environments.toy import Guess
from tests.rollout.test_episodes import EOS, ROW, ids_of, observation_ids, parts, run

__all__ = ["parts"]
VOCAB = {0: "ab", 1: "</se", 2: "arch>x", 3: "yz", 4: "</search>"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def test_the_completion_ends_with_the_token_that_completes_a_stop_string():
    stop = StopStrings(("</search>", "STOP"), decode)
    # "ab" "</se" "arch>x" "yz": the string completes inside token 2, which is kept whole.
    assert stop.end([0, 1, 2, 3]) == 3
    assert stop.end([0, 4, 0]) == 2 and stop.end([0, 0, 3]) is None
    assert stop.completed_by_last([0, 1, 2]) and not stop.completed_by_last([0, 1, 2, 3])
    with pytest.raises(ValueError, match="stop strings must be non-empty"):
        StopStrings(("",), decode)


def _first_stop(text_of, ids: list[int], strings: tuple[str, ...]) -> int | None:
    """A naive oracle: the shortest prefix of ``ids`` whose full text holds a stop string."""
    for length in range(1, len(ids) + 1):
        if any(s in text_of(ids[:length]) for s in strings):
            return length
    return None


@pytest.mark.parametrize("engine", [PackedEngine, HFGenerateEngine], ids=lambda e: e.__name__)
def test_every_engine_stops_where_the_mask_ends(tiny_model_dir, engine):
    # A random tiny model on a character tokenizer: stopping at any of several letters ends
    # most rows early; each row's mask must end exactly where the naive oracle says, and the
    # engine must have sampled nothing after it.
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    strings = ("a", "e", "o", "s", "t", "n", "1", "2")
    sampling = SamplingParams(24, temperature=1.0, stop=strings)
    eos = (tokenizer.eos_token_id,)
    sampler = CompletionSampler(engine(), model, tokenizer, eos, sampling)
    prompts = tokenizer(["1+1=", "2+2="], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = sampler.sample(prompts.input_ids, prompts.attention_mask, 8, version=0)
    stopped = 0
    for ids, mask, truncated in zip(out.ids.tolist(), out.mask, out.truncated, strict=True):
        length = int(mask.sum())
        eos_at = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
        end = _first_stop(sampler.decode, ids[: eos_at or len(ids)], strings)
        expected = min(x for x in (end, eos_at, len(ids)) if x is not None)
        assert length == expected, (ids, length, expected)
        assert bool(truncated) == (end is None and eos_at is None)
        assert all(t == tokenizer.pad_token_id for t in ids[length:]) or eos_at == length
        stopped += end is not None and end == length
    assert stopped >= 8  # most of the 16 rows ended at a stop string


def test_a_turn_that_ends_at_a_stop_string_gets_the_templates_closing(parts):
    # The scripted engine writes on past the tag; the turn ends at ">" (the token completing
    # "</calc>"), and the observation after it starts with the template's closing.
    tokenizer, model = parts
    episodes = Episodes(Guess, max_turns=2, max_episode_tokens=200)
    turns = ["<calc>1+1</calc> and more"]
    out, _ = run(parts, turns, episodes, [ROW], max_new=40, stop_strings=("</calc>",))
    turn = ids_of(parts, "<calc>1+1</calc>")
    digit = Guess.instances[0].seed % 10
    observation = observation_ids(parts, f"no {digit}, again", stopped=False)
    assert out.ids[0].tolist()[: len(turn) + len(observation)] == turn + observation
    assert Guess.instances[0].turns[0].text == "<calc>1+1</calc>"
    assert Guess.instances[0].turns[0].stopped is False
    assert tokenizer.decode(observation).startswith(EOS)
