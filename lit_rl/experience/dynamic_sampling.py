"""DAPO's dynamic sampling: train only on groups whose rewards differ, drawing more prompts."""

import dataclasses
from typing import Any

import torch

from lit_rl.experience.experience import Experience, concatenate


class DynamicSampling:
    """DAPO's dynamic sampling (Yu et al., 2025, §3.2, Eq. 11: ``0 < |{o_i correct}| < G``):
    a group whose G rewards are all equal has zero advantage and only dilutes the batch, so it
    is dropped, and more prompts are drawn until a batch of groups with signal is full.

    The rollout driver offers every sampled batch; the groups kept so far wait in this buffer
    (in checkpoints, through the driver's state) and leave it as one Experience once it holds
    ``target`` groups. A batch of prompts is drawn at most ``max_draws`` times per Experience:
    at the cap the batch is completed with groups dropped from the last draw (zero advantage),
    so every optimizer step trains on as many groups; groups beyond the target are discarded,
    as DAPO does.

    Args:
        max_draws: prompt batches drawn per Experience at most (1 = no extra draws).
        min_reward_std: a group is kept when the std of its rewards exceeds this.
    """

    def __init__(self, max_draws: int = 4, min_reward_std: float = 0.0) -> None:
        if max_draws < 1:
            raise ValueError(f"DynamicSampling: max_draws must be >= 1, got {max_draws}")
        if min_reward_std < 0:
            raise ValueError(f"DynamicSampling: min_reward_std must be >= 0, got {min_reward_std}")
        self.max_draws = max_draws
        self.min_reward_std = min_reward_std
        self.kept: list[Experience] = []  # groups with signal, in the order they were drawn
        self.draws = 0  # batches drawn for the Experience being filled
        self.drawn_groups = 0  # groups drawn for it
        self.dropped_groups = 0  # of them, dropped

    @property
    def kept_groups(self) -> int:
        return sum(e.num_groups for e in self.kept)

    def signal_groups(self, experience: Experience) -> torch.Tensor:  # [N/G] bool
        """The groups whose rewards are not all equal."""
        std = experience.rewards.view(-1, experience.group_size).std(dim=1)
        return std > self.min_reward_std

    def offer(self, experience: Experience) -> None:
        """Keep the groups of ``experience`` that carry signal."""
        signal = self.signal_groups(experience)
        self.draws += 1
        self.drawn_groups += len(signal)
        self.dropped_groups += int((~signal).sum())
        if signal.any():
            self.kept.append(experience.select_groups(signal.nonzero().squeeze(1)))

    @property
    def at_cap(self) -> bool:
        return self.draws >= self.max_draws

    def take(self, last: Experience, target: int, pad_token_id: int) -> tuple[Experience, int]:
        """The Experience of ``target`` groups, emptying the buffer; short of the target (at
        the cap), completed with dropped groups of ``last``, the latest draw. Returns it and
        how many groups were filled in that way."""
        missing = max(0, target - self.kept_groups)
        parts = list(self.kept)
        if missing:
            dropped = (~self.signal_groups(last)).nonzero().squeeze(1)[:missing]
            parts.append(last.select_groups(dropped))
        joined = concatenate(parts, pad_token_id)
        self.kept, self.draws, self.drawn_groups, self.dropped_groups = [], 0, 0, 0
        return joined.select_groups(torch.arange(target)), missing

    def state_dict(self) -> dict[str, Any]:
        return {
            "kept": [dataclasses.asdict(e) for e in self.kept],
            "draws": self.draws,
            "drawn_groups": self.drawn_groups,
            "dropped_groups": self.dropped_groups,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = [Experience(**fields) for fields in state["kept"]]
        self.draws = state["draws"]
        self.drawn_groups = state["drawn_groups"]
        self.dropped_groups = state["dropped_groups"]
