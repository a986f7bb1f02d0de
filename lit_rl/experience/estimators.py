"""Advantage estimators: thin, pluggable wrappers over ``lit_rl.algorithms``' pure functions.

A module takes one as ``advantage_estimator`` (a ``class_path`` in YAML); the experience
pipeline calls it last, once rewards, per-token rewards, values and step rewards exist.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from lit_rl.algorithms import (
    discounted_returns,
    gae,
    group_normalized_advantages,
    last_counted_token,
    leave_one_out_advantages,
    process_supervised_advantages,
    whiten,
)


@dataclass(frozen=True)
class AdvantageInputs:
    """What an estimator may read. N rollouts (prompt-major, G per prompt), T tokens, S steps."""

    rewards: torch.Tensor  # [N] outcome rewards
    token_rewards: torch.Tensor  # [N, T] outcome on the last token, minus KL when in the reward
    completion_mask: torch.Tensor  # [N, T] bool
    group_size: int  # G
    values: torch.Tensor | None = None  # [N, T]
    step_rewards: torch.Tensor | None = None  # [N, S]
    step_ends: torch.Tensor | None = None  # [N, S] completion-token index, -1 = padding

    @property
    def sequence_rewards(self) -> torch.Tensor:  # [N]
        """Each completion's return: its outcome reward minus the KL in the reward, if any."""
        return self.token_rewards.sum(dim=1)


class AdvantageEstimator(ABC):
    """Turns rewards (and values) into per-token advantages [N, T], 0 on padding, and value
    targets ``returns`` [N, T] when it uses a critic (else ``None``)."""

    #: whether the module must compute V(s_t) for every rollout token (a critic)
    needs_values: bool = False
    #: whether it reads the per-token rewards, so that a KL folded into them acts on it
    uses_token_rewards: bool = True
    #: whether it compares the completions of a prompt, so needs G >= 2 of them
    needs_groups: bool = True

    @abstractmethod
    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class GroupNormalized(AdvantageEstimator):
    """GRPO outcome supervision (DeepSeekMath §4.1.2): every token of completion i gets
    ``(r_i - mean(group)) / (std(group) + eps)``; ``scale_by_std=False`` is Dr. GRPO's
    ``r_i - mean(group)``.

    Args:
        scale_by_std: divide by the group's sample std.
        eps: added to the std, so a group of equal rewards gets 0 instead of NaN.
    """

    def __init__(self, scale_by_std: bool = True, eps: float = 1e-4) -> None:
        self.scale_by_std = scale_by_std
        self.eps = eps

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages = group_normalized_advantages(
            inputs.sequence_rewards, inputs.group_size, self.scale_by_std, self.eps
        )  # [N]
        return advantages[:, None] * inputs.completion_mask, None


class LeaveOneOut(AdvantageEstimator):
    """RLOO (Ahmadian et al., 2024): every token of completion i gets
    ``r_i - mean of the other G - 1 rewards of its group``; ``r_i`` is the completion's return
    (with a KL in the reward, ``r_i - kl_coef * sum_t KL_it``, as the paper's reward)."""

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages = leave_one_out_advantages(inputs.sequence_rewards, inputs.group_size)  # [N]
        return advantages[:, None] * inputs.completion_mask, None


class ReinforcePlusPlus(AdvantageEstimator):
    """REINFORCE++ (Hu et al., 2025): critic-free, the KL to the reference in the per-token
    reward (set the module's ``kl_coef``), each token's return
    ``G_t = sum_{s >= t} gamma^(s-t) r_s`` normalised over the global batch (every process's
    counted tokens), ``A = (G - mean) / std``.

    Args:
        gamma: discount per token.
        baseline: ``none`` (REINFORCE++); ``group_mean`` subtracts the mean outcome reward of
            the prompt's group from the outcome first (REINFORCE++-baseline, for G > 1).
    """

    def __init__(self, gamma: float = 1.0, baseline: Literal["none", "group_mean"] = "none"):
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if baseline not in ("none", "group_mean"):
            raise ValueError(f"baseline must be 'none' or 'group_mean', got {baseline!r}")
        self.gamma = gamma
        self.baseline = baseline
        self.needs_groups = baseline == "group_mean"

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        mask = inputs.completion_mask
        token_rewards = inputs.token_rewards
        if self.baseline == "group_mean":
            group_mean = inputs.rewards.view(-1, inputs.group_size).mean(dim=1)  # [N/G]
            last = last_counted_token(mask)  # [N]
            shift = torch.zeros_like(token_rewards)
            shift[torch.arange(len(last)), last] = group_mean.repeat_interleave(inputs.group_size)
            token_rewards = token_rewards - shift
        returns = discounted_returns(token_rewards, mask, self.gamma)
        return whiten(returns, mask, across_processes=True) * mask, None


class ProcessSupervised(AdvantageEstimator):
    """GRPO process supervision (DeepSeekMath §4.1.3): step rewards normalized over the
    group, token t of completion i gets the sum of the normalized rewards of its steps that end
    at or after t. Needs a reward that returns ``step_rewards`` and ``step_ends``
    (``lit_rl.rewards.ArithmeticSteps``, ``lit_rl.rewards.ProcessRewardModel``).

    ``outcome_weight > 0`` adds the outcome advantage on every token,
    ``A = A_process + outcome_weight * (r - mean(r)) / (std(r) + eps)``, for a process reward
    whose steps do not decide the outcome on their own (a learned PRM beside a verifier).

    Args:
        eps: added to the group's std of step rewards (and of outcome rewards).
        outcome_weight: weight of the outcome-supervised advantage added to every token.
    """

    uses_token_rewards = False  # step rewards; a KL belongs in the loss (beta)

    def __init__(self, eps: float = 1e-4, outcome_weight: float = 0.0) -> None:
        if outcome_weight < 0:
            raise ValueError(f"outcome_weight must be >= 0, got {outcome_weight}")
        self.eps = eps
        self.outcome_weight = outcome_weight

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        if inputs.step_rewards is None or inputs.step_ends is None:
            raise ValueError(
                "ProcessSupervised needs step rewards: use a reward that returns "
                "RewardOutput(step_rewards=[N, S], step_ends=[N, S]), or the GroupNormalized "
                "estimator for outcome rewards"
            )
        advantages = process_supervised_advantages(
            inputs.step_rewards,
            inputs.step_ends,
            inputs.group_size,
            inputs.completion_mask.shape[1],
            self.eps,
        )  # [N, T]
        if self.outcome_weight > 0:
            outcome = group_normalized_advantages(inputs.rewards, inputs.group_size, eps=self.eps)
            advantages = advantages + self.outcome_weight * outcome[:, None]
        return advantages * inputs.completion_mask, None


class GAE(AdvantageEstimator):
    """Generalized Advantage Estimation (Schulman et al., 2016) over the per-token rewards,
    with a critic's values; returns = advantages + values are the value targets.

    Args:
        gamma: discount per token.
        lam: GAE's lambda; 1 = Monte-Carlo returns minus values, 0 = one-step TD errors.
        whiten_advantages: normalize advantages to zero mean and unit variance over the
            batch's counted tokens, every process's together (after computing returns, as
            PPO implementations do).
    """

    needs_values = True
    needs_groups = False  # the critic is the baseline: classic PPO samples G = 1

    def __init__(self, gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
        if not 0 <= gamma <= 1 or not 0 <= lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
        self.gamma = gamma
        self.lam = lam
        self.whiten_advantages = whiten_advantages

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.values is None:
            raise ValueError("GAE needs values: the module must provide a critic")
        advantages, returns = gae(
            inputs.token_rewards, inputs.values, inputs.completion_mask, self.gamma, self.lam
        )
        if self.whiten_advantages:
            mask = inputs.completion_mask
            advantages = whiten(advantages, mask, across_processes=True) * mask
        return advantages, returns


def check_estimator(estimator: AdvantageEstimator, num_generations: int, kl_coef: float) -> None:
    """Refuse settings under which ``estimator`` cannot work, naming the fix: groups of one
    for an estimator that compares a prompt's completions; a KL in the reward for one that
    never reads the per-token rewards (process supervision), where it would do nothing."""
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if estimator.needs_groups and num_generations < 2:
        raise ValueError(
            f"num_generations must be >= 2 to form groups for {type(estimator).__name__}, got "
            f"{num_generations}; sample at least two completions per prompt, or use an estimator "
            "with a critic (GAE) for G = 1"
        )
    if kl_coef > 0 and not estimator.uses_token_rewards:
        raise ValueError(
            f"kl_coef={kl_coef} folds a KL into the per-token rewards, which "
            f"{type(estimator).__name__} does not read: put the KL in the loss (beta) instead"
        )
