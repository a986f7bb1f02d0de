"""A rule-based process reward for arithmetic word problems: every ``a op b = c`` is a step."""

import re

import torch

from lit_rl.rewards.base import Batch, RewardOutput, Step, steps_output
from lit_rl.rewards.math import MathCorrectness

_NUMBER = r"-?\d+(?:\.\d+)?"
# "12 + 7 = 19", "3*4=12", "3 x 4 = 12", "12 ÷ 3 = 4"; "x" only between spaces (not "2x").
_EQUATION = re.compile(
    rf"(?<!\d)(?<!\d\.)({_NUMBER})\s*([+\-*×÷/]|\sx\s)\s*({_NUMBER})\s*=\s*({_NUMBER})(?!\.?\d)"
)
_OPERATIONS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "×": lambda a, b: a * b,
    "x": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else float("nan"),
    "÷": lambda a, b: a / b if b else float("nan"),
}


def _numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(_NUMBER, text.replace(",", ""))}


class ArithmeticSteps:
    """Process supervision for the embedded math set (and GSM8K-style answers) by rules.

    Steps, in the order they end in the completion:

    - every equation ``a op b = c`` (op one of + - * x × / ÷): reward ``step_reward`` when
      ``a op b`` equals ``c`` and both operands are grounded (numbers of the question or results
      of earlier correct steps), else 0; an equation repeated verbatim scores 0, so padding a
      solution with true but idle arithmetic earns nothing;
    - the final answer, ending at the end of the completion (the pipeline maps it to the EOS
      token): ``answer_reward`` when it is correct (``MathCorrectness``), else 0.

    ``total`` (the outcome reward) is the final answer's correctness, 1 or 0, so outcome-only
    estimators and held-out evaluation read the same number.

    Args:
        answer_field: the dataset field with the reference answer.
        step_reward: reward of a correct intermediate step.
        answer_reward: reward of a correct final answer.
        question_field: the dataset field whose numbers ground the first steps.
    """

    def __init__(
        self,
        answer_field: str = "answer",
        step_reward: float = 1.0,
        answer_reward: float = 1.0,
        question_field: str = "question",
        name: str = "arithmetic_steps",
    ) -> None:
        self.correctness = MathCorrectness(answer_field)
        self.step_reward = step_reward
        self.answer_reward = answer_reward
        self.question_field = question_field
        self.name = name

    def equation_steps(self, completion: str, question: str) -> list[Step]:
        """The equations of ``completion`` as (reward, end offset) steps."""
        grounded = _numbers(question)
        seen: set[str] = set()
        steps: list[Step] = []
        position = 0
        while match := _EQUATION.search(completion, position):
            # Chains ("2 + 3 = 5 + 4 = 9") share numbers: the next search starts at the result.
            position = match.start(4)
            a, op, b, c = (float(match[1]), match[2].strip(), float(match[3]), float(match[4]))
            text = re.sub(r"\s+", "", match[0])
            correct = (
                abs(_OPERATIONS[op](a, b) - c) < 1e-6
                and a in grounded
                and b in grounded
                and text not in seen
            )
            seen.add(text)
            if correct:
                grounded.add(c)
            steps.append((self.step_reward if correct else 0.0, match.end()))
        return steps

    def fields(self) -> list[str]:
        return self.correctness.fields()

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        answers = self.correctness(prompts, completions, batch).total  # [N] 1/0
        questions = batch.get(self.question_field, prompts)
        steps = [
            [*self.equation_steps(text, question), (self.answer_reward * float(correct), len(text))]
            for text, question, correct in zip(completions, questions, answers, strict=True)
        ]
        step_count = torch.tensor([float(len(row) - 1) for row in steps])
        correct_steps = torch.tensor(
            [sum(r > 0 for r, _ in row[:-1]) / max(1, len(row) - 1) for row in steps]
        )
        components = {
            "correctness": answers,
            f"{self.name}/equations": step_count,
            f"{self.name}/correct_fraction": correct_steps.float(),
        }
        return steps_output(answers, steps, components)
