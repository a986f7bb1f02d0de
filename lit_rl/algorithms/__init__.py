"""Pure tensor math of RL fine-tuning: advantages, losses, log-probabilities.

Shape legend used in every docstring and ``# [..]`` comment of this package:

    N  rollouts in a batch = prompts x G
    G  group size (num_generations): completions sampled per prompt
    T  completion length (padded)
    S  reasoning steps per completion (process supervision, padded)
    V  vocabulary size

Masks are named by polarity: ``completion_mask`` is True where a token counts.
Nothing here imports Lightning or knows about models.
"""

from lit_rl.algorithms.advantages import (
    discounted_returns,
    gae,
    group_normalized_advantages,
    leave_one_out_advantages,
    process_supervised_advantages,
    whiten,
)
from lit_rl.algorithms.distributed import all_reduce_sum, global_max, global_mean, global_std
from lit_rl.algorithms.kl_control import AdaptiveKLController
from lit_rl.algorithms.logprobs import token_logprobs, token_logprobs_with_entropy
from lit_rl.algorithms.losses import (
    AGGREGATIONS,
    Aggregation,
    ImportanceSamplingLevel,
    KLEstimator,
    LossType,
    aggregate,
    aggregation_count,
    aggregation_of,
    explained_variance,
    grpo_loss,
    importance_ratio,
    kl_penalty,
    masked_mean,
    micro_batch_weight,
    ppo_policy_loss,
    value_loss,
)
from lit_rl.algorithms.sampler_mismatch import (
    SAMPLER_CORRECTIONS,
    SamplerCorrection,
    SamplerCorrectionMode,
    sampler_correction_weights,
    sampler_mismatch,
)
from lit_rl.algorithms.shaping import last_counted_token, overlong_penalty, token_level_rewards
from lit_rl.algorithms.surrogates import Surrogate, surrogate_terms

__all__ = [
    "AGGREGATIONS",
    "SAMPLER_CORRECTIONS",
    "AdaptiveKLController",
    "Aggregation",
    "ImportanceSamplingLevel",
    "KLEstimator",
    "LossType",
    "SamplerCorrection",
    "SamplerCorrectionMode",
    "Surrogate",
    "aggregate",
    "all_reduce_sum",
    "aggregation_count",
    "aggregation_of",
    "discounted_returns",
    "explained_variance",
    "gae",
    "global_max",
    "global_mean",
    "global_std",
    "group_normalized_advantages",
    "grpo_loss",
    "importance_ratio",
    "kl_penalty",
    "last_counted_token",
    "leave_one_out_advantages",
    "masked_mean",
    "micro_batch_weight",
    "overlong_penalty",
    "ppo_policy_loss",
    "process_supervised_advantages",
    "sampler_correction_weights",
    "sampler_mismatch",
    "surrogate_terms",
    "token_level_rewards",
    "token_logprobs",
    "token_logprobs_with_entropy",
    "value_loss",
    "whiten",
]
