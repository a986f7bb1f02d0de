"""HFGenerateEngine samples the distribution lit_rl's SamplingParams describe, whatever the
checkpoint's generation_config says, and reports the logprobs of what it sampled."""

import pytest
import torch

from lit_rl.models import load_model, load_tokenizer
from lit_rl.rollout import HFGenerateEngine, SamplingParams
from lit_rl.rollout.sampler import top_p_filter
from tests.conftest import sample

ROWS = 40_000  # samples of one next token: the empirical distribution's TV noise is ~0.01


def peaked_model(model_dir):
    """The tiny model with its logits scaled up, so settings that reshape the distribution
    (a top-k, a repetition penalty) change it by a lot."""
    model = load_model(str(model_dir))
    with torch.no_grad():
        model.model.norm.weight.mul_(6.0)
    return model.eval()


def next_token_distribution(model, ids, temperature, top_p=1.0):
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float() / temperature
    return top_p_filter(logits[None], top_p).softmax(-1)[0]


def empirical(tokens, vocab_size):
    return torch.bincount(tokens, minlength=vocab_size).double() / len(tokens)


def total_variation(p, q):
    return 0.5 * (p.double() - q.double()).abs().sum().item()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_samples_the_explicit_distribution_not_the_checkpoints(tiny_model_dir, top_p):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = peaked_model(tiny_model_dir)
    # What instruct checkpoints ship: every one of these would change what is drawn.
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.top_k = 3
    model.generation_config.min_p = 0.2
    ids = tokenizer(["abcab"], return_tensors="pt").input_ids
    temperature = 0.9
    expected = next_token_distribution(model, ids, temperature, top_p)
    sampling = SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p)
    torch.manual_seed(0)
    out = sample(
        HFGenerateEngine(),
        model,
        ids,
        torch.ones_like(ids),
        ROWS,
        sampling,
        tokenizer.pad_token_id,
        [tokenizer.eos_token_id],
    )
    tokens = out.completion_ids[:, 0]
    assert total_variation(empirical(tokens, len(expected)), expected) < 0.02
    # The logprobs are of the tempered, untruncated distribution (the one the loss scores).
    untruncated = next_token_distribution(model, ids, temperature).log()
    torch.testing.assert_close(out.logprobs[:, 0], untruncated[tokens], rtol=0, atol=1e-5)
    # The checkpoint's own settings (plain generate) draw a far other distribution.
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=ids.expand(ROWS // 4, -1),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=1,
            pad_token_id=tokenizer.pad_token_id,
        )[:, -1]
    assert total_variation(empirical(theirs, len(expected)), expected) > 0.2


def test_greedy_ignores_the_checkpoints_repetition_penalty(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = peaked_model(tiny_model_dir)
    ids = tokenizer(["abcab"], return_tensors="pt").input_ids
    with torch.no_grad():
        argmax = int(model(input_ids=ids).logits[0, -1].argmax())
    # A penalty on the argmax token (it is in the prompt) would move greedy decoding off it.
    model.generation_config.repetition_penalty = 1e6
    for _ in range(8):  # grow the prompt until its next argmax is one of its own tokens
        ids = torch.cat([ids, torch.tensor([[argmax]])], dim=1)
        with torch.no_grad():
            argmax = int(model(input_ids=ids).logits[0, -1].argmax())
        if argmax in ids[0].tolist():
            break
    assert argmax in ids[0].tolist()
    greedy = SamplingParams(max_new_tokens=1, do_sample=False)
    out = sample(
        HFGenerateEngine(),
        model,
        ids,
        torch.ones_like(ids),
        1,
        greedy,
        tokenizer.pad_token_id,
        [tokenizer.eos_token_id],
    )
    assert int(out.completion_ids[0, 0]) == argmax
    with torch.no_grad():  # the checkpoint's penalty, applied by plain generate, moves it
        theirs = model.generate(input_ids=ids, do_sample=False, max_new_tokens=1)[0, -1]
    assert int(theirs) != argmax
