"""The gap between the rollout engine's distribution and the trainer's, and corrections for it.

Both score the same sampled tokens with the same weights, so in exact arithmetic they agree;
kernels, dtypes (a bf16 engine beside a float32 trainer) and bugs (an engine that missed a
weight sync) make them differ. Tokens are drawn from the engine, pi_s; the trainer's pi_old is
what the loss takes as the behaviour policy. Per token, ``rho = pi_old / pi_s``.
"""

from dataclasses import dataclass
from typing import Literal

import torch

from lit_rl.algorithms.distributed import global_max, global_mean

SamplerCorrectionMode = Literal["none", "token_tis", "sequence_tis", "token_mask", "sequence_mask"]
SAMPLER_CORRECTIONS = ("none", "token_tis", "sequence_tis", "token_mask", "sequence_mask")


def sampler_mismatch(
    trainer_logprobs: torch.Tensor,  # [N, T] log pi_old of the sampled tokens
    sampler_logprobs: torch.Tensor,  # [N, T] log pi_s, the engine's
    completion_mask: torch.Tensor,  # [N, T] bool
    token_threshold: float = 0.5,
    across_processes: bool = False,
) -> dict[str, torch.Tensor]:
    """How far the engine samples from the trainer's policy, over counted tokens:

    - ``k3``: mean of ``rho - 1 - log rho``, an unbiased estimate of KL(pi_s || pi_old)
      (Schulman's k3, tokens drawn from pi_s); 0 only when the two agree.
    - ``max_abs``: the largest ``|log pi_old - log pi_s|`` of any token.
    - ``frac_over``: the fraction of tokens with ``|log pi_old - log pi_s| > token_threshold``.

    ``across_processes``: over every process's tokens together.
    """
    log_rho = (trainer_logprobs - sampler_logprobs)[completion_mask].double()
    gap = log_rho.abs()
    mean, maximum = (global_mean, global_max) if across_processes else (torch.mean, torch.max)
    return {
        "k3": mean(torch.expm1(log_rho) - log_rho),
        "max_abs": maximum(gap),
        "frac_over": mean((gap > token_threshold).double()),
    }


def sampler_correction_weights(
    trainer_logprobs: torch.Tensor,  # [N, T] log pi_old
    sampler_logprobs: torch.Tensor,  # [N, T] log pi_s
    completion_mask: torch.Tensor,  # [N, T] bool
    correction: SamplerCorrectionMode,
    low: float = 0.5,
    high: float = 2.0,
) -> torch.Tensor:  # [N, T] float32, detached, 0 on padding
    """Per-token weights that multiply the policy-gradient term of the loss, correcting for
    tokens that were sampled from pi_s rather than pi_old (docs/rollout.md):

    - ``token_tis``: truncated importance sampling (Yao et al., 2025), ``min(rho_t, high)``.
    - ``sequence_tis``: the sequence's ratio ``rho(y) = prod_t rho_t``, ``min(rho(y), high)``
      for every token of the sequence.
    - ``token_mask``: masked importance sampling per token (IcePop, Ling Team 2025): weight 1
      where ``low <= rho_t <= high``, 0 elsewhere (the token is dropped from the gradient).
    - ``sequence_mask``: the same on ``rho(y)``: a sequence outside ``[low, high]`` is dropped.
    - ``none``: 1 everywhere.
    """
    if correction not in SAMPLER_CORRECTIONS:
        raise ValueError(
            f"unknown sampler correction {correction!r}: use one of {SAMPLER_CORRECTIONS}"
        )
    mask = completion_mask.float()
    if correction == "none":
        return mask
    log_rho = ((trainer_logprobs - sampler_logprobs) * mask).detach().float()
    if correction.startswith("sequence"):
        log_rho = log_rho.sum(dim=1, keepdim=True).expand_as(mask)
    rho = torch.exp(log_rho)
    if correction.endswith("tis"):
        return rho.clamp(max=high) * mask
    return ((rho >= low) & (rho <= high)).float() * mask


@dataclass(frozen=True)
class SamplerCorrection:
    """Whether and how the policy gradient is reweighted for the gap between the engine's
    distribution and the trainer's (``sampler_correction_weights``; docs/rollout.md).

    Args:
        mode: ``none``, ``token_tis``, ``sequence_tis``, ``token_mask`` or ``sequence_mask``.
        low: the masks keep ratios ``rho >= low``.
        high: the masks keep ratios ``rho <= high``; TIS truncates at it.
    """

    mode: SamplerCorrectionMode = "none"
    low: float = 0.5
    high: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in SAMPLER_CORRECTIONS:
            raise ValueError(
                f"sampler_correction mode must be one of {SAMPLER_CORRECTIONS}, got {self.mode!r}"
            )
        if not 0 <= self.low < 1 < self.high:
            raise ValueError(
                "sampler_correction needs 0 <= low < 1 < high, got "
                f"low={self.low}, high={self.high}"
            )

    def weights(
        self,
        trainer_logprobs: torch.Tensor,  # [n, T] log pi_old
        sampler_logprobs: torch.Tensor | None,  # [n, T] log pi_s, the engine's
        completion_mask: torch.Tensor,  # [n, T] bool
    ) -> torch.Tensor | None:  # [n, T], None without a correction
        """The weights of a micro-batch's policy-gradient terms."""
        if self.mode == "none":
            return None
        if sampler_logprobs is None:
            raise ValueError(
                f"sampler_correction {self.mode!r} needs the engine's logprobs in the "
                "Experience (make_experience sets them)"
            )
        return sampler_correction_weights(
            trainer_logprobs, sampler_logprobs, completion_mask, self.mode, self.low, self.high
        )
