"""Math answer correctness, checked with math-verify."""

import re

import torch
from math_verify import parse, verify

from lit_rl.rewards.base import Batch, RewardOutput

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER = re.compile(r"answer(?:\s+is)?\s*[:=]?\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last ``\\boxed{..}``, else the last "Answer: N" /
    "the answer is N", else the last number; None when there is no candidate."""
    for pattern in (_BOXED, _ANSWER, _NUMBER):
        found = pattern.findall(completion)
        if found:
            return found[-1].replace(",", "").strip()
    return None


def reference_answer(answer: object) -> str:
    """GSM8K writes the solution then ``#### 42``: keep what follows the marker."""
    text = str(answer)
    return text.split("####")[-1].strip().replace(",", "") if "####" in text else text.strip()


class MathCorrectness:
    """1.0 when the completion's final answer equals ``batch[answer_field]``, else 0.0.

    Equality is math-verify's (numbers, fractions, LaTeX expressions), so "27", "27.0" and
    "\\boxed{27}" all match 27.
    """

    def __init__(self, answer_field: str = "answer", name: str = "correctness") -> None:
        self.answer_field = answer_field
        self.name = name

    def fields(self) -> list[str]:
        return [self.answer_field]

    def score(self, completion: str, answer: object) -> float:
        predicted = extract_answer(completion)
        if predicted is None:
            return 0.0
        gold = parse(reference_answer(answer))
        guess = parse(predicted)
        return float(bool(gold) and bool(guess) and verify(gold, guess))

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        if self.answer_field not in batch:
            raise KeyError(
                f"MathCorrectness reads the reference answer from field "
                f"'{self.answer_field}', but the batch has {sorted(batch)}; set "
                "answer_field to the dataset's answer column"
            )
        answers = batch[self.answer_field]
        values = torch.tensor([self.score(c, a) for c, a in zip(completions, answers, strict=True)])
        return RewardOutput(total=values, components={self.name: values})
