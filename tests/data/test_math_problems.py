import re

import pytest

from lit_rl.data import TEMPLATES, generate_problems, train_test_split


def _recompute(problem: dict[str, str]) -> int:
    """Re-derive the answer from the numbers in the question, per template."""
    n = [int(x) for x in re.findall(r"\d+", problem["question"])]
    return {
        "add": lambda: n[0] + n[1],
        "subtract": lambda: n[0] - n[1],
        "multiply": lambda: n[0] * n[1],
        "divide": lambda: n[0] // n[1],
        "two_step": lambda: n[0] + n[1] - n[2],
        "price": lambda: n[0] * n[1],
        "sum": lambda: n[0] + n[1],
    }[problem["template"]]()


def test_answers_are_correct_integers_for_every_template():
    problems = generate_problems(600, seed=3) + generate_problems(50, seed=3, templates=["sum"])
    assert {p["template"] for p in problems} == set(TEMPLATES)
    for p in problems:
        assert int(p["answer"]) == _recompute(p) and int(p["answer"]) >= 0, p


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert generate_problems(50, seed=7) == generate_problems(50, seed=7)
    assert generate_problems(50, seed=7) != generate_problems(50, seed=8)


def test_test_split_is_held_out():
    train, test = train_test_split(2000, 200, train_seed=0, test_seed=1)
    assert len(train) == 2000 and len(test) == 200
    assert not {p["question"] for p in train} & {p["question"] for p in test}


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="unknown math templates \\['cube'\\]"):
        generate_problems(3, 0, templates=["add", "cube"])
