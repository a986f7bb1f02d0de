"""CompletionSampler without a Trainer: the engine's rows come back with their completion mask
and the texts the reward sees; the weights are made whole once per sample; greedy decoding
keeps the budget; a stale engine is named; a closed sampler sets the engine up again."""

from contextlib import contextmanager

import pytest
import torch

from lit_rl.models import load_model, load_tokenizer
from lit_rl.rollout import (
    CompletionSampler,
    Generation,
    GenerationRequest,
    InProcessEngine,
    SamplingParams,
    StaleWeightsError,
    policy_fingerprint,
)


class FixedRows(InProcessEngine):
    """Answers every prompt with "hi", then EOS, then (as a decoding past the EOS would) "x";
    records the requests and its setups."""

    name = "FixedRows"

    def __init__(self, tokenizer, version_offset: int = 0) -> None:
        super().__init__()
        self.tokenizer, self.offset = tokenizer, version_offset
        self.requests: list[GenerationRequest] = []
        self.setups = 0

    def setup(self, policy, sampling) -> None:
        self.setups += 1

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        row = (
            self.tokenizer("hi").input_ids
            + [request.eos_token_ids[0]]
            + self.tokenizer("x").input_ids
        )
        ids = torch.tensor([row] * request.num_rows)
        logprobs = -torch.arange(ids.numel(), dtype=torch.float32).view(ids.shape) / 10
        return Generation(
            ids,
            logprobs,
            self.weights_version + self.offset,
            policy_fingerprint(self.synced_policy()),
        )


@pytest.fixture
def parts(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = tokenizer(["ab", "a longer one"], return_tensors="pt", padding=True)
    return tokenizer, load_model(str(tiny_model_dir)), prompts.input_ids, prompts.attention_mask


def test_rows_come_back_masked_through_the_eos_and_decoded(parts):
    tokenizer, policy, ids, mask = parts
    entered = []

    @contextmanager
    def whole(module):
        entered.append(module)
        yield module

    engine = FixedRows(tokenizer)
    sampling = SamplingParams(max_new_tokens=6, temperature=0.7)
    eos = (tokenizer.eos_token_id,)
    sampler = CompletionSampler(engine, policy, tokenizer, eos, sampling, whole_weights=whole)
    out = sampler.sample(ids, mask, num_generations=3, version=4)
    assert out.ids.shape == (6, 4) and out.weights_version == 4
    assert out.mask.tolist() == [[True, True, True, False]] * 6  # "h", "i", EOS; not "x"
    assert out.texts == ["hi"] * 6  # the EOS and what follows it are not the reward's to see
    # The engine's, as given, on the sampled tokens; 0 past the end (Completions' contract,
    # whatever the engine left there).
    expected = -torch.arange(24, dtype=torch.float32).view(6, 4) / 10
    assert torch.equal(out.logprobs, expected.masked_fill(~out.mask, 0.0))
    assert entered == [policy]  # once for the whole generation
    request = engine.requests[0]
    assert request.sampling == sampling and request.num_generations == 3
    assert request.pad_token_id == tokenizer.pad_token_id and request.eos_token_ids == eos
    assert sampler.decode(out.ids[0, :2].tolist()) == "hi"


def test_greedy_keeps_the_length_budget_and_nothing_else(parts):
    tokenizer, policy, ids, mask = parts
    engine = FixedRows(tokenizer)
    sampling = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.9)
    sampler = CompletionSampler(engine, policy, tokenizer, (tokenizer.eos_token_id,), sampling)
    sampler.sample(ids, mask, 1, version=0, greedy=True)
    assert engine.requests[0].sampling == SamplingParams(max_new_tokens=6, do_sample=False)


def test_an_engine_serving_other_weights_is_named(parts):
    tokenizer, policy, ids, mask = parts
    engine = FixedRows(tokenizer, version_offset=-1)
    sampler = CompletionSampler(
        engine, policy, tokenizer, (tokenizer.eos_token_id,), SamplingParams(max_new_tokens=4)
    )
    with pytest.raises(StaleWeightsError, match="FixedRows sampled with weights version 1"):
        sampler.sample(ids, mask, 1, version=2)


def test_a_closed_sampler_sets_its_engine_up_again(parts):
    # fit, then validate in one process: the engine is closed at the end of the first and
    # set up again for the second.
    tokenizer, policy, ids, mask = parts
    engine = FixedRows(tokenizer)
    sampler = CompletionSampler(
        engine, policy, tokenizer, (tokenizer.eos_token_id,), SamplingParams(max_new_tokens=4)
    )
    sampler.sample(ids, mask, 1, version=0)
    sampler.sample(ids, mask, 1, version=1)
    assert engine.setups == 1
    sampler.close()
    assert engine.policy is None
    sampler.sample(ids, mask, 1, version=1)
    assert engine.setups == 2 and engine.weights_version == 1
