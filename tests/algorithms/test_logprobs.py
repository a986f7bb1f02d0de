import math

import torch

from lit_rl.algorithms import token_logprobs, token_logprobs_with_entropy


def test_token_logprobs_hand_values():
    # logits [0, ln 3] -> softmax [1/4, 3/4]; at temperature 2 logits [0, ln 3 / 2] -> [1, sqrt 3]
    logits = torch.tensor([[[0.0, math.log(3)]]], dtype=torch.float64)
    labels = torch.tensor([[1]])
    assert abs(token_logprobs(logits, labels).item() - math.log(0.75)) < 1e-12
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    assert abs(token_logprobs(logits, labels, temperature=2.0).item() - expected) < 1e-12


def test_token_logprobs_matches_full_log_softmax_across_chunks():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, labels[..., None]).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    got = token_logprobs(
        logits, labels, temperature=0.7, chunk_size=10
    )  # chunks of 2 rows and 1 row
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-12)


def test_token_logprobs_bf16_in_float32_out_with_gradient():
    logits = torch.randn(2, 3, 7).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 7, (2, 3))
    lp = token_logprobs(logits, labels, chunk_size=2)
    assert lp.dtype == torch.float32
    lp.sum().backward()
    # d/dlogits of log p[label] = onehot - softmax: each row's gradient sums to 0
    assert logits.grad.float().sum(-1).abs().max() < 1e-2


def test_entropy_uniform_and_peaked():
    labels = torch.zeros(1, 2, dtype=torch.long)
    _, uniform = token_logprobs_with_entropy(torch.zeros(1, 2, 8), labels)
    torch.testing.assert_close(uniform, torch.full((1, 2), math.log(8)))
    _, peaked = token_logprobs_with_entropy(torch.tensor([[[0.0, -1e4, -1e4]] * 2]), labels)
    assert peaked.abs().max() < 1e-6


def test_entropy_matches_definition_on_non_contiguous_logits():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 9, generator=g, dtype=torch.float64)[:, :-1]  # a sliced view
    labels = torch.randint(0, 9, (4, 5), generator=g)
    lp, entropy = token_logprobs_with_entropy(logits, labels, temperature=1.3, chunk_size=7)
    logp = torch.log_softmax(logits / 1.3, -1)
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        lp, logp.gather(-1, labels[..., None]).squeeze(-1), rtol=0, atol=1e-12
    )
