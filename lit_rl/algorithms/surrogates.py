"""What the policy ratio does to each token's advantage: the surrogate objectives of the policy
losses (``lit_rl.algorithms.losses``), per token, before aggregation and KL."""

from typing import Literal

import torch

# PPO's clip, CISPO's clipped stop-gradient IS weight on the REINFORCE term, SAPO's soft gate.
Surrogate = Literal["clip", "cispo", "sapo"]


def clipped_surrogate(
    ratio: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N, T]
    epsilon: float,
    epsilon_high: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A)`` per token.

    Returns (surrogate [N, T], clipped [N, T] bool: the clip was the minimum).
    """
    high = epsilon if epsilon_high is None else epsilon_high
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + high)
    unclipped_term = ratio * advantages
    clipped_term = clipped_ratio * advantages
    surrogate = torch.minimum(unclipped_term, clipped_term)
    return surrogate, clipped_term < unclipped_term


def _cispo_surrogate(
    ratio: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N, T]
    logprobs: torch.Tensor,  # [N, T]
    epsilon: float,
    epsilon_high: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, 2025, §3.1): ``sg(clip(r, 1 - eps, 1 + eps_high)) * A * log pi`` per
    token. The importance weight is clipped and passes no gradient; the REINFORCE term it
    weighs keeps every token's gradient (PPO's clip drops the gradient of clipped tokens).

    Returns (surrogate [N, T], clipped [N, T] bool: the weight's clip acted)."""
    high = epsilon if epsilon_high is None else epsilon_high
    weight = torch.clamp(ratio, 1 - epsilon, 1 + high).detach()
    return weight * advantages * logprobs, weight != ratio.detach()


def _sapo_surrogate(
    ratio: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N, T]
    temperatures: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAPO (Gao et al., 2025, §3): ``f(r) * A`` per token with the soft gate
    ``f(r) = 4 / tau * sigmoid(tau * (r - 1))``, ``tau = tau_pos`` where ``A > 0`` else
    ``tau_neg``: at ``r = 1`` its gradient is the policy gradient's (``f'(1) = 1``), and it
    fades smoothly as the ratio leaves 1 instead of PPO's hard clip.

    Returns (surrogate [N, T], clipped [N, T] bool: all False, nothing is clipped)."""
    tau_pos, tau_neg = temperatures
    tau = torch.full_like(ratio, tau_neg).masked_fill(advantages > 0, tau_pos)
    gate = 4 / tau * torch.sigmoid(tau * (ratio - 1))
    return gate * advantages, torch.zeros_like(ratio, dtype=torch.bool)


def surrogate_terms(
    surrogate: Surrogate,
    ratio: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N, T]
    logprobs: torch.Tensor,  # [N, T]
    epsilon: float,
    epsilon_high: float | None,
    sapo_temperatures: tuple[float, float] = (1.0, 1.05),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's surrogate objective (to maximise) by ``surrogate``, and where it clipped."""
    if surrogate == "clip":
        return clipped_surrogate(ratio, advantages, epsilon, epsilon_high)
    if surrogate == "cispo":
        return _cispo_surrogate(ratio, advantages, logprobs, epsilon, epsilon_high)
    if surrogate == "sapo":
        return _sapo_surrogate(ratio, advantages, sapo_temperatures)
    raise ValueError(f"unknown surrogate {surrogate!r}: use 'clip', 'cispo' or 'sapo'")
