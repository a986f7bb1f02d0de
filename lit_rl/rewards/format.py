"""A format reward: did the completion state its answer the way the prompt asked?"""

import re

import torch

from lit_rl.rewards.base import Batch, RewardOutput


class FormatReward:
    """1.0 when ``pattern`` (a regular expression) occurs in the completion, else 0.0.

    The default asks for a final line like "Answer: 42".
    """

    def __init__(self, pattern: str = r"Answer:\s*-?\d", name: str = "format") -> None:
        self.pattern = re.compile(pattern)
        self.name = name

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        values = torch.tensor([float(bool(self.pattern.search(c))) for c in completions])
        return RewardOutput(total=values, components={self.name: values})
