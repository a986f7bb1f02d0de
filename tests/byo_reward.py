"""A user's own reward, defined outside lit_rl and plugged in by class_path in YAML."""

import torch

from lit_rl.rewards import RewardOutput


class ContainsTargetCharacter:
    """1.0 when the completion contains the first character of ``batch[field]``, plus a small
    length bonus, so that a random tiny model sees some reward spread."""

    def __init__(self, field: str = "target", name: str = "contains_target") -> None:
        self.field = field
        self.name = name

    def __call__(self, prompts, completions, batch) -> RewardOutput:
        hits = torch.tensor(
            [float(str(t)[:1] in c) for c, t in zip(completions, batch[self.field], strict=True)]
        )
        brevity = torch.tensor([1.0 / (1 + len(c)) for c in completions])
        return RewardOutput(total=hits + brevity, components={self.name: hits, "brevity": brevity})
