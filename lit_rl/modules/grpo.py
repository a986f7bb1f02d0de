"""GRPOModule: Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath §4.1)."""

from typing import Any

import torch

from lit_rl.algorithms import LossType, aggregation_of, grpo_loss, masked_mean
from lit_rl.experience import AdvantageEstimator, Experience, GroupNormalized
from lit_rl.modules.base import PolicyModule


class GRPOModule(PolicyModule):
    """The update of GRPO: logprobs -> ``grpo_loss`` (KL to the reference in the loss).

    Experiences (G completions per prompt, rewards, advantages, reference logprobs) arrive
    ready-made from ``lit_rl.callbacks.RolloutCallback``.

    Arguments beyond ``PolicyModule``'s, named as in TRL's GRPOConfig.

    Args:
        beta: weight of the k3 KL to the reference in the loss; 0 skips the reference.
        epsilon: lower clip range of the ratio (and upper, unless ``epsilon_high``).
        epsilon_high: upper clip range (DAPO's clip-higher); ``None`` = ``epsilon``.
        loss_type: ``grpo`` (DeepSeekMath Eq. 3), ``dr_grpo`` or ``dapo`` aggregation.
        scale_rewards: divide group-centred rewards by the group std (``False`` = Dr. GRPO);
            configures the default estimator only.
        num_iterations: mu, passes over each Experience (each pass takes ``num_mini_batches``
            optimizer steps).
        advantage_estimator: ``None`` = ``GroupNormalized`` (outcome supervision);
            ``lit_rl.experience.ProcessSupervised`` for step rewards (§4.1.3). Estimators that
            need a critic belong to ``PPOModule``.
    """

    def __init__(
        self,
        *args: Any,
        beta: float = 0.04,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: LossType = "grpo",
        scale_rewards: bool = True,
        num_iterations: int = 1,
        advantage_estimator: AdvantageEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if beta < 0:
            raise ValueError(f"GRPOModule: beta must be >= 0, got {beta}")
        if not 0 < epsilon < 1 or (epsilon_high is not None and epsilon_high <= 0):
            raise ValueError(
                f"epsilon must be in (0, 1) and epsilon_high > 0, got {epsilon}, {epsilon_high}"
            )
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        if advantage_estimator is not None and not scale_rewards:
            raise ValueError(
                "scale_rewards configures the default estimator; with an advantage_estimator "
                "set its own option (GroupNormalized(scale_by_std=false))"
            )
        estimator = advantage_estimator or GroupNormalized(scale_by_std=scale_rewards)
        if estimator.needs_values:
            raise ValueError(
                f"{type(estimator).__name__} needs a value model, which GRPO does not train: "
                "use lit_rl.modules.PPOModule, or GroupNormalized / ProcessSupervised"
            )
        self.advantage_estimator = estimator
        self.beta = beta
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.loss_type = loss_type
        self.loss_aggregation = aggregation_of(loss_type)
        self.update_epochs = num_iterations
        if beta > 0:
            self.use_reference()

    def accumulate_gradients(
        self, micro: Experience, weight: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logprobs, entropy = self.policy_logprobs(micro.sequences, with_entropy=True)
        old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        loss, stats = grpo_loss(
            logprobs,
            old_logprobs,
            micro.ref_logprobs,
            micro.advantages,
            micro.completion_mask,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            loss_type=self.loss_type,
            sampler_weights=self.sampler_weights(micro, old_logprobs),
        )
        self.manual_backward(loss * weight)
        stats = {
            "loss": loss.detach(),
            "entropy": masked_mean(entropy, micro.completion_mask),
            **stats,
        }
        return stats, logprobs.detach()
