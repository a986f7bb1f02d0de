"""pass@k, maj@k and the evaluation metrics against hand-computed values."""

import math

import pytest
import torch

from lit_rl.evaluation import EvaluationBatch, EvaluationMetrics, majority_correct, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 is the fraction correct
        (5, 2, 2, 1 - math.comb(3, 2) / math.comb(5, 2)),  # 1 - 3/10
        (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),  # 1 - 21/252
        (4, 1, 4, 1.0),  # all four drawn: the correct one is among them
        (8, 7, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (6, 0, 3, 0.0),
        (100, 1, 10, 0.1),  # 1 - C(99,10)/C(100,10) = 10/100
    ],
)
def test_pass_at_k_is_chen_et_al_unbiased_estimator(n, c, k, expected):
    got = pass_at_k(torch.tensor([n]), torch.tensor([c]), k)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert got.item() == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_refuses_fewer_samples_than_k():
    with pytest.raises(ValueError, match="pass@5 needs at least 5 samples"):
        pass_at_k(torch.tensor([4]), torch.tensor([1]), 5)


def test_majority_vote_hand_values():
    answers = [
        ["3", "4", "4", None],  # 4 wins 2-1; the second sample (a 4) is correct
        ["7", "8", "8", "7"],  # a tie: the answer seen first (7) wins; it is wrong
        [None, None, None, None],  # nobody answers: wrong
        ["1", "2", "3", "2"],  # 2 wins; the 2s are wrong though sample 0 was right
    ]
    correct = torch.tensor(
        [
            [False, True, True, False],
            [False, True, True, False],
            [False, False, False, False],
            [True, False, False, False],
        ]
    )
    assert majority_correct(answers, correct).tolist() == [True, False, False, False]


def test_evaluation_metrics_over_batches():
    metrics = EvaluationMetrics(num_samples=4)
    metrics.record(
        EvaluationBatch(
            greedy_correct=torch.tensor([True, False]),
            greedy_reward=torch.tensor([1.0, 0.0]),
            greedy_length=torch.tensor([10, 20]),
            sample_correct=torch.tensor([[True, False, False, False], [True, True, False, False]]),
            majority_correct=torch.tensor([False, True]),
        )
    )
    metrics.record(
        EvaluationBatch(
            greedy_correct=torch.tensor([True]),
            greedy_reward=torch.tensor([1.0]),
            greedy_length=torch.tensor([30]),
            sample_correct=torch.tensor([[False, False, False, False]]),
            majority_correct=torch.tensor([False]),
        )
    )
    got = {name: float(value) for name, value in metrics.compute().items()}
    # pass@1 per problem: 1/4, 2/4, 0; pass@4: 1, 1, 0.
    assert got == pytest.approx(
        {
            "greedy_accuracy": 2 / 3,
            "reward": 2 / 3,
            "completion_len": 20.0,
            "pass@1": (0.25 + 0.5 + 0.0) / 3,
            "pass@4": 2 / 3,
            "maj@4": 1 / 3,
        }
    )
