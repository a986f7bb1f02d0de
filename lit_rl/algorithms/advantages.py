"""Advantage estimators: group-relative (GRPO), leave-one-out (RLOO), process-supervised GRPO,
GAE (PPO), discounted returns (REINFORCE++)."""

import torch

from lit_rl.algorithms.distributed import all_reduce_sum


def _check_groups(num_rollouts: int, group_size: int) -> int:
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 to normalise within a group, got {group_size}; "
            "sample at least two completions per prompt (num_generations >= 2)"
        )
    if num_rollouts % group_size:
        raise ValueError(
            f"{num_rollouts} rollouts do not split into groups of {group_size}: "
            "rollouts must be ordered prompt-major, num_generations per prompt"
        )
    return num_rollouts // group_size


def group_normalized_advantages(
    rewards: torch.Tensor,  # [N]
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:  # [N]
    """Outcome-supervised group-relative advantages.

    DeepSeekMath (Shao et al., 2024) §4.1.2: ``A_i = (r_i - mean(r)) / std(r)`` over the G
    rewards of one question's group, ``std`` the sample (unbiased) standard deviation; ``eps``
    keeps a zero-variance group at exactly zero advantage instead of NaN.
    ``scale_by_std=False`` is Dr. GRPO (Liu et al., 2025, §3.2): ``A_i = r_i - mean(r)``.

    Rollouts are prompt-major: rows ``[k*G, (k+1)*G)`` are the completions of prompt k.
    """
    _check_groups(rewards.shape[0], group_size)
    grouped = rewards.view(-1, group_size)  # [N/G, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def leave_one_out_advantages(
    rewards: torch.Tensor,  # [N]
    group_size: int,
) -> torch.Tensor:  # [N]
    """RLOO (Kool et al., 2019; Ahmadian et al., 2024, Eq. 5): each completion's baseline is
    the mean reward of the other G - 1 completions of its prompt,
    ``A_i = r_i - 1/(G-1) sum_{j != i} r_j`` (= G/(G-1) (r_i - mean(r))), unbiased because the
    baseline does not depend on the sample it scores."""
    _check_groups(rewards.shape[0], group_size)
    grouped = rewards.view(-1, group_size)  # [N/G, G]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def discounted_returns(
    token_rewards: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    gamma: float = 1.0,
) -> torch.Tensor:  # [N, T]
    """``G_t = sum_{s >= t} gamma^(k(s) - k(t)) r_s`` over each row's counted tokens, 0 on the
    others: the Monte-Carlo return REINFORCE++ (Hu et al., 2025, Eq. 6) uses as advantage
    before normalising it. ``k(t)`` numbers the counted tokens, so the discount counts the
    policy's own tokens only (an episode's environment tokens, mask 0, are not its actions)."""
    mask = completion_mask.bool()
    rewards = token_rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * mask


def process_supervised_advantages(
    step_rewards: torch.Tensor,  # [N, S]
    step_ends: torch.Tensor,  # [N, S] long, -1 = padding step
    group_size: int,
    num_tokens: int,
    eps: float = 1e-4,
) -> torch.Tensor:  # [N, T]
    """Process-supervised group-relative advantages.

    DeepSeekMath §4.1.3: every step reward of a group is normalised by the mean and sample std
    of all step rewards in that group, ``r~ = (r - mean) / (std + eps)``, and token t of
    completion i gets ``A[i, t] = sum_{j : step_ends[i, j] >= t} r~[i, j]``: the normalised
    rewards of the steps that end at or after t.

    ``step_ends[i, j]`` is the completion-token index where step j of completion i ends;
    padding steps carry -1 and contribute nothing. A group with fewer than two real steps has
    no spread to normalise by and gets zero advantages.
    """
    num_groups = _check_groups(step_rewards.shape[0], group_size)
    valid = step_ends >= 0  # [N, S]
    rewards = step_rewards.masked_fill(~valid, 0.0)
    grouped_rewards = rewards.view(num_groups, -1)  # [N/G, G*S]
    grouped_valid = valid.view(num_groups, -1)
    count = grouped_valid.sum(dim=1, keepdim=True)  # [N/G, 1]
    mean = grouped_rewards.sum(dim=1, keepdim=True) / count.clamp(min=1)
    squared = ((grouped_rewards - mean) ** 2).masked_fill(~grouped_valid, 0.0)
    # Sample (unbiased) variance, as torch.std; zero where a group has < 2 steps.
    var = squared.sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    normalized = ((grouped_rewards - mean) / (var.sqrt() + eps)).masked_fill(~grouped_valid, 0.0)
    normalized = normalized.view_as(step_rewards)  # [N, S]

    token_index = torch.arange(num_tokens, device=step_ends.device)  # [T]
    counts_at = valid[:, :, None] & (step_ends[:, :, None] >= token_index)  # [N, S, T]
    return (normalized[:, :, None] * counts_at).sum(dim=1)  # [N, T]


def gae(
    rewards: torch.Tensor,  # [N, T]
    values: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N, T], [N, T])
    """Generalised Advantage Estimation (Schulman et al., 2016, Eq. 16).

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = sum_l (gamma * lam)^l delta_{t+l}``
    over the counted tokens of a row, where ``t'`` is the next counted token after ``t`` and
    ``V`` after a row's last counted token is 0 (the episode ends there). Tokens outside the
    mask are skipped, not stepped through: in a multi-turn episode the environment's tokens
    (mask 0) are not the policy's actions, so the bootstrap runs from one sampled token to the
    next sampled one. For a completion (the mask a prefix) this is the usual recursion.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0 where
    the mask is 0.
    """
    mask = completion_mask.bool()
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])  # A at the next counted token
    next_value = torch.zeros_like(running)  # V at the next counted token
    for t in reversed(range(values.shape[1])):
        counted = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(counted, delta + gamma * lam * running, running)
        next_value = torch.where(counted, values[:, t], next_value)
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(
    values: torch.Tensor,  # [N, T] (or any shape)
    mask: torch.Tensor | None = None,  # same shape, bool
    shift_mean: bool = True,
    eps: float = 1e-8,
    across_processes: bool = False,
) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the masked entries.

    Variance is the unbiased sample variance of the masked entries. With ``shift_mean=False``
    only the scale changes (the mean is added back), as PPO implementations do for rewards.
    ``across_processes``: the mean and variance are those of every process's masked entries
    together (the global batch), as if one process held them all.
    """
    reduce = all_reduce_sum if across_processes else (lambda t: t)
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    weights = mask.to(values.dtype)
    count, total = reduce(torch.stack([weights.sum(), (values * weights).sum()]))
    if count < 2:
        raise ValueError(f"whiten needs at least 2 masked entries, got {int(count)}")
    mean = total / count
    var = reduce((((values - mean) ** 2) * weights).sum()) / (count - 1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
