import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from lit_rl.rollout.sampler import sample_tokens, top_p_filter


@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.95])
def test_top_p_filter_matches_transformers_warper(top_p):
    # Oracle: transformers' own nucleus warper, which generate applies.
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    expected = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits, top_p), expected)


def test_top_p_keeps_the_most_likely_token_and_hand_values():
    # probs 0.5, 0.3, 0.2 (logits = log probs). top_p 0.6: 0.5 < 0.6, so the nucleus needs the
    # 0.3 token too; the 0.2 token goes (its tail mass 0.2 <= 0.4). top_p 0.1: only the argmax.
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.isinf(top_p_filter(logits, 0.6)).tolist() == [[False, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.1)).tolist() == [[False, True, True]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_draws_follow_the_tempered_distribution():
    # 200,000 independent rows of one distribution; each frequency within 5 standard errors.
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    temperature = 0.5
    logits = (probs.log() * temperature).expand(200_000, -1)  # softmax(logits / T) = probs
    tokens, logprobs = sample_tokens(
        logits, temperature, generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    se = (probs * (1 - probs) / len(tokens)).sqrt().double()
    assert (freq - probs).abs().le(5 * se + 1e-12).all(), freq
    assert freq[4] == 0  # a zero-probability token is never drawn
    assert torch.allclose(logprobs, probs.log()[tokens])


def test_top_p_draws_stay_in_the_nucleus_and_logprobs_are_untruncated():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(50_000, -1)
    tokens, logprobs = sample_tokens(logits, 1.0, 0.6, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=3).double() / len(tokens)
    # Renormalised nucleus: 0.5/0.8 = 0.625, 0.3/0.8 = 0.375, 0.
    assert freq[2] == 0 and abs(freq[0] - 0.625) < 5 * math.sqrt(0.625 * 0.375 / 50_000)
    # The logprob is of the full tempered distribution (what the loss scores).
    assert torch.allclose(logprobs, probs.log()[tokens])


def test_greedy_takes_the_argmax_and_sampling_is_seeded():
    logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(2))
    tokens, _ = sample_tokens(logits, 0.7, greedy=True)
    assert torch.equal(tokens, logits.argmax(-1))

    def draw(seed):
        return sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
