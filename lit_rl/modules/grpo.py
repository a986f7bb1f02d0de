"""GRPOModule: Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath §4.1)."""

import dataclasses
from typing import Any

from lit_rl.algorithms import (
    ImportanceSamplingLevel,
    KLEstimator,
    LossType,
    Surrogate,
    aggregation_of,
    grpo_loss,
    masked_mean,
)
from lit_rl.experience import AdvantageEstimator, Experience, GroupNormalized, check_estimator
from lit_rl.modules.base import PolicyModule
from lit_rl.update import MicroBatchLoss


class GRPOModule(PolicyModule):
    """The update of GRPO: logprobs -> ``grpo_loss`` (KL to the reference in the loss).

    Experiences (G completions per prompt, rewards, advantages, reference logprobs) arrive
    ready-made from ``lit_rl.callbacks.RolloutCallback``. The critic-free variants are options
    of this module (docs/algorithms/variants.md): Dr. GRPO (``loss_type: dr_grpo``,
    ``scale_rewards: false``), DAPO (``loss_type: dapo``, ``epsilon_high``), GSPO
    (``importance_sampling_level: sequence``), CISPO (``surrogate: cispo``, ``loss_type:
    dapo``), SAPO (``surrogate: sapo``), RLOO (``lit_rl.experience.LeaveOneOut``),
    REINFORCE++ (``lit_rl.experience.ReinforcePlusPlus`` with ``kl_coef``), process
    supervision (``lit_rl.experience.ProcessSupervised``).

    Arguments beyond ``PolicyModule``'s, named as in TRL's GRPOConfig.

    Args:
        beta: weight of the KL to the reference in the loss; 0 skips it.
        loss_kl_estimator: the KL in the loss per token: ``k3`` (DeepSeekMath Eq. 4), ``k1``
            or ``k2``.
        kl_coef: weight of the KL(pi_old || pi_ref) subtracted from the per-token reward
            before the estimator runs (REINFORCE++, RLHF PPO); 0 = none.
        kl_estimator: the KL in the reward per token: ``k1`` (log-ratio), ``k2`` or ``k3``.
        epsilon: lower clip range of the ratio (and upper, unless ``epsilon_high``), in
            (0, 1]; with ``surrogate: cispo`` of its importance weight (1 = no lower bound).
        epsilon_high: upper clip range (DAPO's clip-higher); ``None`` = ``epsilon``.
        loss_type: ``grpo`` (DeepSeekMath Eq. 3), ``dr_grpo`` (sum / (N x
            max_completion_length)), ``dapo`` (token mean over the whole batch) or ``bnpo``
            (token mean over each micro-batch).
        importance_sampling_level: ``token`` ratios (GRPO) or GSPO's length-normalised
            ``sequence`` ratio, clipped per sequence.
        surrogate: what the ratio does to each token's advantage: ``clip`` (PPO's clipped
            surrogate, DeepSeekMath Eq. 3), ``cispo`` (MiniMax-M1's clipped, stop-gradient
            importance weight on the REINFORCE term; token ratios only) or ``sapo`` (SAPO's
            soft gate ``4/tau sigmoid(tau (r - 1))``).
        sapo_temperature_pos: SAPO's tau where the advantage is positive.
        sapo_temperature_neg: SAPO's tau elsewhere (the paper's 1.05 > 1.0: negative
            advantages' gradients fade faster).
        scale_rewards: divide group-centred rewards by the group std (``False`` = Dr. GRPO);
            configures the default estimator only.
        num_iterations: mu, passes over each Experience (each pass takes ``num_mini_batches``
            optimizer steps).
        advantage_estimator: ``None`` = ``GroupNormalized`` (outcome supervision); any
            critic-free estimator (``LeaveOneOut``, ``ReinforcePlusPlus``,
            ``ProcessSupervised`` for step rewards, §4.1.3). Estimators that need a critic
            belong to ``PPOModule``.
    """

    def __init__(
        self,
        *args: Any,
        beta: float = 0.04,
        loss_kl_estimator: KLEstimator = "k3",
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k1",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: LossType = "grpo",
        importance_sampling_level: ImportanceSamplingLevel = "token",
        surrogate: Surrogate = "clip",
        sapo_temperature_pos: float = 1.0,
        sapo_temperature_neg: float = 1.05,
        scale_rewards: bool = True,
        num_iterations: int = 1,
        advantage_estimator: AdvantageEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if beta < 0 or kl_coef < 0:
            raise ValueError(f"GRPOModule: beta and kl_coef must be >= 0, got {beta}, {kl_coef}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        sapo_temperatures = (sapo_temperature_pos, sapo_temperature_neg)
        check_ratio_settings(
            epsilon, epsilon_high, importance_sampling_level, surrogate, sapo_temperatures
        )
        if advantage_estimator is not None and not scale_rewards:
            raise ValueError(
                "scale_rewards configures the default estimator; with an advantage_estimator "
                "set its own option (GroupNormalized(scale_by_std=false))"
            )
        estimator = advantage_estimator or GroupNormalized(scale_by_std=scale_rewards)
        if estimator.needs_values:
            raise ValueError(
                f"{type(estimator).__name__} needs a value model, which GRPO does not train: "
                "use lit_rl.modules.PPOModule, or a critic-free estimator (GroupNormalized, "
                "LeaveOneOut, ReinforcePlusPlus, ProcessSupervised)"
            )
        check_estimator(estimator, self.num_generations, kl_coef)
        self.advantage_estimator = estimator
        self.beta = beta
        self.loss_kl_estimator = loss_kl_estimator
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.loss_type = loss_type
        self.importance_sampling_level = importance_sampling_level
        self.surrogate = surrogate
        self.sapo_temperatures = sapo_temperatures
        self.policy_update.plan = dataclasses.replace(
            self.policy_update.plan, epochs=num_iterations, aggregation=aggregation_of(loss_type)
        )
        if beta > 0 or kl_coef > 0:  # pi_ref: the adapters off under LoRA, else a frozen copy
            self.model_recipe = dataclasses.replace(self.model_recipe, reference=True)

    def accumulate_gradients(self, micro: Experience, weight: float) -> MicroBatchLoss:
        """DeepSeekMath Eq. 3 on one micro-batch: per-token clipped ratio to pi_old, minus
        beta x the KL to pi_ref, averaged as ``loss_type`` says; backward ``weight`` x it."""
        logprobs, entropy = self.policy_logprobs(micro.sequences, with_entropy=True)
        # On-policy (one optimizer step) pi_old is pi itself, detached: the ratio is 1.
        old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        correction = self.sampler_correction.weights(
            old_logprobs, micro.sampler_logprobs, micro.completion_mask
        )
        loss, stats = grpo_loss(
            logprobs,
            old_logprobs,
            micro.ref_logprobs,
            micro.advantages,
            micro.loss_mask,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            loss_type=self.loss_type,
            sampler_weights=correction,
            kl_estimator=self.loss_kl_estimator,
            importance_sampling_level=self.importance_sampling_level,
            max_completion_length=self.sampler.max_rollout_tokens,  # (an episode's budget)
            surrogate=self.surrogate,
            sapo_temperatures=self.sapo_temperatures,
        )
        self.manual_backward(loss * weight)
        entropy = masked_mean(entropy, micro.loss_mask)
        return MicroBatchLoss(
            {"loss": loss.detach(), "entropy": entropy, **stats}, logprobs.detach()
        )


def check_ratio_settings(
    epsilon: float,
    epsilon_high: float | None,
    level: ImportanceSamplingLevel,
    surrogate: Surrogate,
    sapo_temperatures: tuple[float, float],
) -> None:
    """The clip range, the ratio's level and the surrogate's own constraints, named with the
    fix."""
    if not 0 < epsilon <= 1 or (epsilon_high is not None and epsilon_high <= 0):
        raise ValueError(
            f"epsilon must be in (0, 1] and epsilon_high > 0, got {epsilon}, {epsilon_high}"
        )
    if level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")
    if surrogate not in ("clip", "cispo", "sapo"):
        raise ValueError(f"surrogate must be 'clip', 'cispo' or 'sapo', got {surrogate!r}")
    if surrogate == "cispo" and level != "token":
        raise ValueError(
            "surrogate: cispo weighs each token by its own clipped ratio (MiniMax-M1 §3.1): "
            "use importance_sampling_level: token"
        )
    if surrogate == "sapo" and min(sapo_temperatures) <= 0:
        raise ValueError(f"SAPO's temperatures must be > 0, got {sapo_temperatures}")
