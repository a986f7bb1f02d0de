"""The two shipped environments, turn by turn."""

import pytest

from lit_rl.environments import Calculator, MathFeedback, TagToolCalls, Turn

ROW = {"prompt": "What is 6*7?", "answer": "42", "hint": "six sevens"}


def play(environment, texts, parser=None):
    messages = environment.reset(ROW, seed=0)
    results = []
    for index, text in enumerate(texts):
        calls = parser(text) if parser else None
        turn = Turn(text, index, calls.calls if calls else [], calls.errors if calls else [])
        results.append(environment.step(turn))
        if results[-1].done:
            break
    return messages, results


@pytest.mark.parametrize(("attempt", "reward"), [(1, 1.0), (2, 0.5), (3, 0.25)])
def test_feedback_rewards_an_earlier_right_answer_more(attempt, reward):
    texts = ["It is 41."] * (attempt - 1) + ["The answer is 42."]
    messages, results = play(MathFeedback(max_attempts=3, discount=0.5), texts)
    assert messages == [{"role": "user", "content": "What is 6*7?"}]
    assert [r.done for r in results] == [False] * (attempt - 1) + [True]
    assert results[-1].reward == reward
    for result in results[:-1]:
        assert result.observation == [
            {"role": "user", "content": "That is not correct. Try again. Hint: six sevens"}
        ]


def test_feedback_ends_after_its_attempts_without_reward():
    _, results = play(MathFeedback(max_attempts=2), ["41", "no idea", "42"])
    assert len(results) == 2 and results[-1].done and results[-1].reward == 0.0


def test_feedback_without_an_answer_says_so():
    _, results = play(MathFeedback(hint_field="none"), ["I am thinking"])
    assert "could not find your answer" in results[0].observation[0]["content"]


def test_feedback_names_a_missing_field():
    with pytest.raises(KeyError, match="MathFeedback reads the row's 'solution'"):
        MathFeedback(answer_field="solution").reset(ROW, 0)


def test_calculator_answers_calls_then_rewards_the_answer():
    environment = Calculator(tool_role="user")
    texts = ["<calc>6*7</calc>", "<calc>6/0</calc>", "So the answer is 42."]
    messages, results = play(environment, texts, TagToolCalls())
    assert "<calc>expression</calc>" in messages[0]["content"]
    assert messages[0]["content"].endswith("What is 6*7?")
    assert results[0].observation == [{"role": "user", "content": "42"}]
    assert "calculate raised ZeroDivisionError" in results[1].observation[0]["content"]
    assert results[1].metrics == {"tool_calls": 1.0, "tool_errors": 1.0}
    assert results[2].done and results[2].reward == 1.0
