"""Policy and value losses: GRPO (and its aggregation and ratio variants), PPO, clipped value
loss."""

from typing import Literal

import torch

from lit_rl.algorithms.distributed import all_reduce_sum
from lit_rl.algorithms.surrogates import Surrogate, clipped_surrogate, surrogate_terms

KLEstimator = Literal["k1", "k2", "k3"]
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
Aggregation = Literal[
    "sequence_mean", "token_mean", "constant_normalizer", "micro_token_mean", "batch_token_mean"
]

# How each loss_type reduces per-token losses [N, T] to a scalar; only the aggregation differs.
_AGGREGATION: dict[str, Aggregation] = {
    # DeepSeekMath Eq. 3: 1/G sum_i 1/|o_i| sum_t
    "grpo": "sequence_mean",
    # Dr. GRPO (Liu et al., 2025, Eq. 2): no 1/|o_i| length bias; the constant normaliser
    # N x max_completion_length (the generation budget, not the longest completion drawn).
    "dr_grpo": "constant_normalizer",
    # DAPO (Yu et al., 2025, Eq. 12): 1 / sum_i |o_i| over every completion of the batch: the
    # whole Experience, across minibatches, micro-batches and processes.
    "dapo": "batch_token_mean",
    # BNPO as TRL defines it: a token mean over each process's micro-batch (the local batch);
    # it changes with the micro-batch size by design.
    "bnpo": "micro_token_mean",
}
AGGREGATIONS: tuple[str, ...] = (*_AGGREGATION.values(), "token_mean")


def aggregation_of(loss_type: LossType) -> Aggregation:
    """How ``grpo_loss`` with this ``loss_type`` reduces per-token terms to a scalar."""
    if loss_type not in _AGGREGATION:
        raise ValueError(f"unknown loss_type {loss_type!r}: use one of {list(_AGGREGATION)}")
    return _AGGREGATION[loss_type]


def masked_mean(
    values: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T] bool
    dim: int | None = None,
) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (over ``dim``, or over everything)."""
    weights = mask.to(values.dtype)
    if dim is None:
        return (values * weights).sum() / weights.sum().clamp(min=1)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1)


def aggregate(
    per_token: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    aggregation: Aggregation,
    max_completion_length: int | None = None,
) -> torch.Tensor:  # []
    """Reduce per-token values to a scalar.

    - ``sequence_mean``: mean over each completion's tokens, then over completions.
    - ``token_mean``, ``micro_token_mean``, ``batch_token_mean``: mean over every counted token
      of the given batch (long answers weigh more). They differ in which batch that is when an
      update is cut into parts (``micro_batch_weight``, ``lit_rl.update.PolicyUpdate``).
    - ``constant_normalizer``: sum over counted tokens / (N * ``max_completion_length``).
    """
    if aggregation == "sequence_mean":
        return masked_mean(per_token, completion_mask, dim=1).mean()
    if aggregation in ("token_mean", "micro_token_mean", "batch_token_mean"):
        return masked_mean(per_token, completion_mask)
    if aggregation == "constant_normalizer":
        if max_completion_length is None or max_completion_length < per_token.shape[1]:
            raise ValueError(
                "constant_normalizer (dr_grpo) divides by N x max_completion_length, the "
                f"generation budget: pass max_completion_length >= {per_token.shape[1]} (the "
                f"padded length), got {max_completion_length}"
            )
        return (per_token * completion_mask).sum() / (
            completion_mask.shape[0] * max_completion_length
        )
    raise ValueError(f"unknown aggregation {aggregation!r}: use one of {list(AGGREGATIONS)}")


def aggregation_count(
    mask: torch.Tensor,  # [N, T] bool
    aggregation: Aggregation,
) -> int:
    """What ``aggregation`` averages over in a batch: its counted tokens for the token means
    over a whole batch, its rows otherwise (``micro_token_mean`` weighs each micro-batch's own
    token mean by its rows)."""
    if aggregation in ("token_mean", "batch_token_mean"):
        return int(mask.sum().item())
    if aggregation in ("sequence_mean", "constant_normalizer", "micro_token_mean"):
        return mask.shape[0]
    raise ValueError(f"unknown aggregation {aggregation!r}")


def micro_batch_weight(
    micro_mask: torch.Tensor,  # [n, T] bool, rows of one micro-batch
    batch_mask: torch.Tensor,  # [N, T] bool, the whole (mini)batch it was cut from
    aggregation: Aggregation,
) -> float:
    """The factor that makes gradient accumulation exact: the sum over micro-batches of
    ``weight * aggregate(micro)`` equals ``aggregate(batch)``; weight = n / N over rows,
    tokens(micro) / tokens(batch) for ``token_mean``.
    """
    return aggregation_count(micro_mask, aggregation) / max(
        1, aggregation_count(batch_mask, aggregation)
    )


def kl_penalty(
    logprobs: torch.Tensor,  # [N, T]
    ref_logprobs: torch.Tensor,  # [N, T]
    estimator: KLEstimator = "k3",
) -> torch.Tensor:  # [N, T]
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens (Schulman, 2020).

    k1 = log pi - log pi_ref; k2 = (log pi - log pi_ref)^2 / 2;
    k3 = pi_ref/pi - log(pi_ref/pi) - 1 (DeepSeekMath Eq. 4: unbiased and always >= 0).
    """
    log_ratio = ref_logprobs - logprobs  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}: use 'k1', 'k2' or 'k3'")


def importance_ratio(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    level: ImportanceSamplingLevel = "token",
) -> torch.Tensor:  # [N, T]
    """The policy ratio the surrogate clips.

    ``token`` (PPO, GRPO): ``r_it = pi(o_it) / pi_old(o_it)``. ``sequence`` (GSPO, Zheng et al.,
    2025, Eq. 7): the length-normalised sequence ratio
    ``s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|) = exp(1/|o_i| sum_t (log pi - log pi_old))``,
    the same on every token of completion i.
    """
    log_ratio = logprobs - old_logprobs
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, completion_mask, dim=1)[:, None].expand_as(logprobs)
    elif level != "token":
        raise ValueError(f"unknown importance_sampling_level {level!r}: use 'token' or 'sequence'")
    return torch.exp(log_ratio)


def _minus_kl(
    objective: torch.Tensor,  # [N, T]
    logprobs: torch.Tensor,  # [N, T]
    ref_logprobs: torch.Tensor | None,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    beta: float,
    estimator: KLEstimator,
    stats: dict[str, torch.Tensor],
) -> torch.Tensor:  # [N, T]
    """``objective - beta * KL(pi || pi_ref)`` per token, ``objective`` itself at beta = 0;
    the KL's mean over counted tokens goes to ``stats["kl"]``."""
    if beta == 0.0:
        return objective
    if ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs; pass beta=0.0 to train without KL")
    kl = kl_penalty(logprobs, ref_logprobs, estimator)
    stats["kl"] = masked_mean(kl, completion_mask).detach()
    return objective - beta * kl


def grpo_loss(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor,  # [N, T]
    ref_logprobs: torch.Tensor | None,  # [N, T]
    advantages: torch.Tensor,  # [N] or [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.04,
    loss_type: LossType = "grpo",
    sampler_weights: torch.Tensor | None = None,  # [N, T]
    kl_estimator: KLEstimator = "k3",
    importance_sampling_level: ImportanceSamplingLevel = "token",
    max_completion_length: int | None = None,
    surrogate: Surrogate = "clip",
    sapo_temperatures: tuple[float, float] = (1.0, 1.05),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective, negated to a loss.

    ``loss_type="grpo"`` is DeepSeekMath Eq. 3 exactly::

        J = 1/G sum_i 1/|o_i| sum_t [ min(r_it A_it, clip(r_it, 1-eps, 1+eps) A_it)
                                      - beta * D_KL,it ]

    with ``r_it = pi(o_it) / pi_old(o_it)`` and ``D_KL`` the k3 estimator (Eq. 4). At
    ``r = 1`` its gradient per token is Eq. 21: ``(A + beta (pi_ref/pi - 1)) grad log pi``.
    ``epsilon_high`` decouples the upper clip (DAPO's clip-higher); ``dr_grpo``, ``dapo`` and
    ``bnpo`` change only the aggregation (see ``aggregate``; ``dr_grpo`` needs
    ``max_completion_length``). ``importance_sampling_level="sequence"`` clips GSPO's sequence
    ratio instead of the token ratio (``importance_ratio``). ``kl_estimator`` picks the
    per-token KL in the loss (k3 is Eq. 4; ``kl_penalty``). ``advantages`` of shape [N]
    (outcome supervision) apply to every token of a completion. ``sampler_weights``
    (detached, from ``sampler_correction_weights``) multiply each token's clipped surrogate,
    not its KL. ``surrogate`` replaces the clipped term per token (``surrogate_terms``):
    CISPO's ``cispo`` (``epsilon``/``epsilon_high`` bound its importance weight) or SAPO's
    soft gate ``sapo`` (``sapo_temperatures`` = (tau_pos, tau_neg)).

    Returns ``(loss, stats)``; stats are detached: ``kl`` (mean KL over counted tokens),
    ``clip_ratio`` (fraction of counted tokens where the clip was active), ``ratio``.
    """
    aggregation = aggregation_of(loss_type)
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = advantages.expand_as(logprobs)
    ratio = importance_ratio(logprobs, old_logprobs, completion_mask, importance_sampling_level)
    terms, clipped = surrogate_terms(
        surrogate, ratio, advantages, logprobs, epsilon, epsilon_high, sapo_temperatures
    )
    per_token_objective = terms if sampler_weights is None else sampler_weights * terms
    stats: dict[str, torch.Tensor] = {}
    per_token_objective = _minus_kl(
        per_token_objective, logprobs, ref_logprobs, completion_mask, beta, kl_estimator, stats
    )
    loss = -aggregate(per_token_objective, completion_mask, aggregation, max_completion_length)
    stats["clip_ratio"] = masked_mean(clipped.to(logprobs.dtype), completion_mask).detach()
    stats["ratio"] = masked_mean(ratio, completion_mask).detach()
    return loss, stats


def ppo_policy_loss(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "token_mean",
    sampler_weights: torch.Tensor | None = None,  # [N, T]
    ref_logprobs: torch.Tensor | None = None,  # [N, T]
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al., 2017, Eq. 7), negated to a loss.

    PPO's KL to the reference is usually folded into the per-token reward before GAE
    (``token_level_rewards``); ``beta > 0`` puts ``beta * KL`` (``kl_estimator``) in the loss
    instead or as well, as GRPO does. ``sampler_weights`` (detached) multiply each token's
    surrogate (``grpo_loss``). Returns ``(loss, stats)`` with ``clip_ratio``, ``ratio``,
    ``approx_kl`` (k3 between old and current policy, a step-size diagnostic) and ``kl``
    (with ``beta > 0``).
    """
    ratio = importance_ratio(logprobs, old_logprobs, completion_mask)
    surrogate, clipped = clipped_surrogate(ratio, advantages, epsilon, epsilon_high)
    if sampler_weights is not None:
        surrogate = sampler_weights * surrogate
    stats: dict[str, torch.Tensor] = {}
    surrogate = _minus_kl(
        surrogate, logprobs, ref_logprobs, completion_mask, beta, kl_estimator, stats
    )
    loss = -aggregate(surrogate, completion_mask, aggregation)
    stats |= {
        "clip_ratio": masked_mean(clipped.to(logprobs.dtype), completion_mask).detach(),
        "ratio": masked_mean(ratio, completion_mask).detach(),
        "approx_kl": masked_mean(
            kl_penalty(logprobs, old_logprobs, "k3"), completion_mask
        ).detach(),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,  # [N, T]
    old_values: torch.Tensor,  # [N, T]
    returns: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T] bool
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 baselines; Ouyang et al., 2022):
    ``1/2 * mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`` over counted tokens.

    Returns ``(loss, stats)`` with ``value_clip_ratio`` (fraction where the clipped term won:
    ``V`` left the range and the clipped error is the larger).
    """
    # Clamped in place, not as V_old + clamp(V - V_old): inside the range the clipped value is
    # V itself, so the two errors tie exactly and no token counts as clipped. The other form
    # rounds V_old + (V - V_old) to V plus or minus an ulp and counts a coin flip per token.
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), completion_mask)
    stats = {
        "value_clip_ratio": masked_mean(
            (clipped_error > unclipped_error).to(values.dtype), completion_mask
        ).detach(),
    }
    return loss, stats


def explained_variance(
    values: torch.Tensor,  # [N, T] predictions V(s_t)
    returns: torch.Tensor,  # [N, T] targets
    completion_mask: torch.Tensor,  # [N, T] bool
    across_processes: bool = False,
) -> torch.Tensor:  # []
    """``1 - Var(returns - values) / Var(returns)`` over counted tokens: 1 is a perfect value
    function, 0 no better than predicting the mean return, negative worse than that. NaN when
    the returns do not vary (nothing to explain), as in Stable-Baselines3 and CleanRL.
    ``across_processes``: over every process's counted tokens together."""
    reduce = all_reduce_sum if across_processes else (lambda t: t)
    weights = completion_mask.to(returns.dtype)
    count = reduce(weights.sum()).clamp(min=1)

    def variance(x: torch.Tensor) -> torch.Tensor:
        mean = reduce((x * weights).sum()) / count
        return reduce((((x - mean) ** 2) * weights).sum()) / count

    total = variance(returns)
    if total == 0:
        return torch.tensor(float("nan"), dtype=returns.dtype)
    return (1 - variance(returns - values) / total).detach()
