"""Per-token rewards: the sequence reward on the last token, the KL to the reference folded in."""

import torch


def token_level_rewards(
    rewards: torch.Tensor,  # [N]
    completion_mask: torch.Tensor,  # [N, T] bool
    kl: torch.Tensor | None = None,  # [N, T]
    kl_coef: float = 0.0,
) -> torch.Tensor:  # [N, T]
    """``r_t = -kl_coef * kl_t`` on every counted token, plus the sequence reward on the last.

    The reward model scores a whole completion; PPO for language models (Ziegler et al., 2019,
    Eq. 2; Ouyang et al., 2022, Eq. 2) subtracts the per-token KL to the reference from it, so
    the reward of completion i at token t is ``R_i * [t = last] - kl_coef * KL_it``. Padding
    gets 0. With ``kl=None`` (GRPO) only the sequence reward remains.
    """
    last = last_counted_token(completion_mask)  # [N]
    token_rewards = torch.zeros(completion_mask.shape, dtype=rewards.dtype, device=rewards.device)
    token_rewards[torch.arange(rewards.shape[0], device=rewards.device), last] = rewards
    if kl is not None:
        token_rewards = token_rewards - kl_coef * kl.to(rewards.dtype) * completion_mask
    return token_rewards


def last_counted_token(completion_mask: torch.Tensor) -> torch.Tensor:  # [N, T] -> [N] long
    """The index of each row's last True: the completion's last token (its EOS when it
    stopped), an episode's last sampled token (its mask has the environment's turns as gaps)."""
    if not completion_mask.any(dim=1).all():
        raise ValueError("every completion needs at least one counted token in completion_mask")
    positions = torch.arange(completion_mask.shape[1], device=completion_mask.device)
    return (positions * completion_mask).argmax(dim=1)


def overlong_penalty(
    lengths: torch.Tensor,  # [N] completion lengths in tokens
    max_length: int,  # L_max, the generation budget (max_completion_length)
    buffer_length: int,  # L_cache, the soft-penalty zone before L_max
    penalty_factor: float = 1.0,
) -> torch.Tensor:  # [N], <= 0
    """DAPO's soft overlong punishment (Yu et al., 2025, Eq. 13), added to the reward:
    0 for ``|y| <= L_max - L_cache``, ``((L_max - L_cache) - |y|) / L_cache`` inside the
    buffer (falling linearly to -1 at ``L_max``), -1 past ``L_max``; times ``penalty_factor``.
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(
            f"buffer_length must be in (0, max_length={max_length}], got {buffer_length}"
        )
    free = max_length - buffer_length
    penalty = ((free - lengths.to(torch.float32)) / buffer_length).clamp(max=0.0, min=-1.0)
    return penalty_factor * penalty
