import math

import pytest
import torch

from lit_rl.rewards import (
    ArithmeticSteps,
    FormatReward,
    FunctionReward,
    MathCorrectness,
    RewardOutput,
    WeightedSum,
    call_reward,
    check_reward_fields,
    check_reward_output,
    extract_answer,
    reward_fields,
)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so 3 + 4 = 7.\nAnswer: 7", "7"),
        ("The answer is 1,250 dollars, not 5", "1250"),
        (r"first 3, then \boxed{12}, and 9", "12"),
        ("18 + 9 = 27 marbles", "27"),
        ("Answer: -4", "-4"),
        ("no digits here", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_math_correctness_values_and_gsm8k_answers():
    reward = MathCorrectness()
    completions = ["Answer: 72", "it is 72.0", r"\boxed{72}", "Answer: 71", "nothing"]
    answers = ["72", "72", "#### 72", "72", "72"]
    out = reward(["q"] * 5, completions, {"answer": answers})
    assert out.total.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert torch.equal(out.components["correctness"], out.total)


def test_math_correctness_missing_field_is_named():
    with pytest.raises(KeyError, match="field 'solution'.*has \\['answer'\\]"):
        MathCorrectness(answer_field="solution")(["q"], ["1"], {"answer": ["1"]})


def test_format_and_weighted_sum():
    completions = ["Answer: 5", "5", "Answer: 4"]
    batch = {"answer": ["5", "5", "5"]}
    out = WeightedSum([MathCorrectness(), FormatReward()], weights=[1.0, 0.5])(
        ["q"] * 3, completions, batch
    )
    # correctness [1, 1, 0], format [1, 0, 1] -> total [1.5, 1.0, 0.5]
    assert out.total.tolist() == [1.5, 1.0, 0.5]
    assert out.components["format"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedSum([FormatReward()], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="component named 'format'"):
        WeightedSum([FormatReward(), FormatReward()])(["q"], ["x"], {})


def test_function_reward_wraps_plain_functions():
    def brevity(prompts, completions, batch):
        return [1.0 / len(c) for c in completions]

    out = FunctionReward(brevity)(["q", "q"], ["ab", "abcd"], {})
    assert out.total.tolist() == [0.5, 0.25] and "brevity" in out.components
    with pytest.raises(TypeError, match="'bad' must return a list or tensor of numbers"):
        FunctionReward(lambda p, c, b: ["high", "low"], name="bad")(["q"] * 2, ["a", "b"], {})


@pytest.mark.parametrize(
    ("total", "message"),
    [
        (torch.ones(3), "shape \\(3,\\) for training batch 7; expected \\(4,\\)"),
        (
            torch.tensor([1.0, math.nan, 0.0, 0.0]),
            "non-finite 'total' \\(nan\\) for completion 1 of training batch 7",
        ),
        (torch.tensor([1.0, 0.0, 0.0, math.inf]), "non-finite 'total' \\(inf\\) for completion 3"),
    ],
)
def test_bad_reward_output_names_reward_and_batch(total, message):
    class Broken:
        name = "broken"

    with pytest.raises(ValueError, match=f"reward 'broken' gave .*{message}"):
        check_reward_output(RewardOutput(total=total), Broken(), 4, "training batch 7")


def test_reward_returning_a_list_is_told_to_wrap():
    with pytest.raises(TypeError, match="must return RewardOutput.*FunctionReward"):
        check_reward_output([1.0], object(), 1, "training batch 0")


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (dict(step_rewards=torch.zeros(2, 3)), "step_rewards without step_ends"),
        (
            dict(step_rewards=torch.zeros(2, 3), step_ends=torch.zeros(2, 2, dtype=torch.long)),
            "expected both \\(2, S\\)",
        ),
        (
            dict(
                step_rewards=torch.tensor([[math.nan], [0.0]]),
                step_ends=torch.ones(2, 1, dtype=torch.long),
            ),
            "non-finite step_rewards",
        ),
        (
            dict(step_rewards=torch.zeros(2, 1), step_ends=torch.ones(2, 1)),
            "not integer character offsets",
        ),
    ],
)
def test_bad_step_rewards_are_named(steps, message):
    output = RewardOutput(total=torch.zeros(2), **steps)
    with pytest.raises(ValueError, match=message):
        check_reward_output(
            output, FunctionReward(lambda p, c, b: [0.0], name="steps"), 2, "batch 0"
        )


def test_rewards_declare_the_dataset_fields_they_read():
    correctness = MathCorrectness(answer_field="solution")
    assert reward_fields(correctness) == ["solution"]
    assert reward_fields(ArithmeticSteps(answer_field="target")) == ["target"]
    combined = WeightedSum([correctness, FormatReward(), MathCorrectness(name="again")])
    assert reward_fields(combined) == ["answer", "solution"]  # FormatReward reads none
    assert reward_fields(FunctionReward(lambda p, c, b: [0.0] * len(c))) == []


def test_a_failing_reward_is_named_with_the_batch():
    def broken(prompts, completions, batch):
        return [1 / 0 for _ in completions]

    reward = FunctionReward(broken, name="broken")
    with pytest.raises(
        RuntimeError, match="reward 'broken' raised ZeroDivisionError on batch 7"
    ) as err:
        call_reward(reward, ["p"], ["c"], {}, "batch 7")
    assert isinstance(err.value.__cause__, ZeroDivisionError)  # its traceback is kept
    # lit_rl's own rewards refusing their input say it all themselves, unwrapped.
    with pytest.raises(KeyError, match="MathCorrectness reads the reference answer"):
        call_reward(MathCorrectness(answer_field="gold"), ["p"], ["c"], {"answer": [1]}, "b")
    # The output is checked: one value per completion.
    with pytest.raises(ValueError, match="'short' gave 'total' of shape \\(1,\\) for batch 3"):
        call_reward(
            FunctionReward(lambda p, c, b: [0.0], name="short"), ["p"] * 2, ["c"] * 2, {}, "batch 3"
        )
    output = call_reward(FunctionReward(lambda p, c, b: [0.5, 1.0]), ["p"] * 2, ["c", "d"], {}, "b")
    assert output.total.tolist() == [0.5, 1.0]


def test_the_fields_a_reward_reads_are_checked_against_a_batch():
    batch = {"input_ids": None, "prompt": ["q"], "answer": ["4"]}
    check_reward_fields(MathCorrectness(), batch)
    check_reward_fields(FunctionReward(lambda p, c, b: [0.0]), batch)  # reads none it names
    with pytest.raises(
        KeyError,
        match=r"reads the dataset field\(s\) \['gold'\], but the training batches have \['answer', 'prompt'\]",
    ):
        check_reward_fields(MathCorrectness(answer_field="gold"), batch)
