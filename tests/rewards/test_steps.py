"""The rule-based arithmetic step reward: which equations count, where steps end, the total."""

import torch

from lit_rl.rewards import ArithmeticSteps, check_reward_output

QUESTION = "Ava has 12 apples, buys 7 more, then loses 4. How many apples does Ava have now?"


def test_each_equation_is_a_step_scored_by_arithmetic_and_grounding():
    reward = ArithmeticSteps()
    text = "12 + 7 = 19, then 19 - 4 = 15. Also 2 + 2 = 4 and 19-4=14.\nAnswer: 15"
    steps = reward.equation_steps(text, QUESTION)
    ends = [text.index(s) + len(s) for s in ("12 + 7 = 19", "19 - 4 = 15", "2 + 2 = 4", "19-4=14")]
    # Correct and grounded; correct on an earlier result; true but 2 is not in the question
    # nor a result; wrong arithmetic.
    assert steps == [(1.0, ends[0]), (1.0, ends[1]), (0.0, ends[2]), (0.0, ends[3])]


def test_operators_chains_and_repeats():
    reward = ArithmeticSteps()
    question = "A box holds 6 pens. How many pens are in 3 boxes? 18 shared by 3?"
    cases = {
        "3 x 6 = 18": [1.0],
        "3×6=18 and 18 ÷ 3 = 6 and 18 / 3 = 6": [1.0, 1.0, 1.0],
        "6 * 3 = 18 + 3 = 21": [1.0, 1.0],  # a chain: the second step starts at its result
        "6 * 3 = 18, 6 * 3 = 18": [1.0, 0.0],  # a verbatim repeat earns nothing
        "3x6=18": [],  # "x" counts as times only between spaces
        "6 / 0 = 0": [0.0],
    }
    for text, expected in cases.items():
        assert [r for r, _ in reward.equation_steps(text, question)] == expected, text


def test_the_final_answer_is_the_last_step_and_the_total():
    reward = ArithmeticSteps(step_reward=0.5, answer_reward=2.0)
    completions = ["12 + 7 = 19, 19 - 4 = 15.\nAnswer: 15", "12 + 7 = 20.\nAnswer: 16", "no idea"]
    batch = {"question": [QUESTION] * 3, "answer": ["15"] * 3}
    out = check_reward_output(reward(["p"] * 3, completions, batch), reward, 3, "a test batch")
    assert out.total.tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(out.components["correctness"], out.total)
    lengths = [len(c) for c in completions]
    assert out.step_rewards.tolist() == [[0.5, 0.5, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert out.step_ends[:, -1].tolist()[:1] == [lengths[0]]
    assert out.step_ends[1].tolist() == [completions[1].index("."), lengths[1], -1]
    assert out.step_ends[2].tolist() == [lengths[2], -1, -1]
    assert out.components["arithmetic_steps/equations"].tolist() == [2.0, 1.0, 0.0]
    assert out.components["arithmetic_steps/correct_fraction"].tolist() == [1.0, 0.0, 0.0]
