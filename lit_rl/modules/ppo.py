"""PPOModule: PPO for language models with a critic (Schulman et al., 2017; Ziegler et al., 2019;
Ouyang et al., 2022), as DeepSeekMath §4.1 describes the baseline GRPO replaces."""

import dataclasses
from typing import Any

import torch

from lit_rl.algorithms import (
    AdaptiveKLController,
    KLEstimator,
    all_reduce_sum,
    explained_variance,
    masked_mean,
    ppo_policy_loss,
    value_loss,
)
from lit_rl.experience import GAE, AdvantageEstimator, Experience, check_estimator
from lit_rl.modules.base import PolicyModule
from lit_rl.state import require_keys
from lit_rl.update import MicroBatchLoss


class PPOModule(PolicyModule):
    """The update of PPO: clipped surrogate on GAE advantages plus a clipped value loss, with the
    KL to the reference folded into the per-token reward.

    The critic is, by default, a second LoRA adapter on the policy's own backbone with a scalar
    head: one set of base weights serves the policy (its adapter on), the reference (all adapters
    off) and the critic (the value adapter on); no second copy of the model. ``value_model``
    names a separate model instead (fully trained, float32 under ``dtype: auto``).

    The critic is an option: an estimator that does not use values (``ReinforcePlusPlus``,
    ``LeaveOneOut``, ``GroupNormalized``) trains the clipped surrogate alone, with no critic
    and no value loss (REINFORCE++ is this module with ``ReinforcePlusPlus``).

    Arguments beyond ``PolicyModule``'s, named as in TRL's PPOConfig and OpenRLHF.

    Args:
        epsilon: clip range of the policy ratio (``cliprange``).
        epsilon_high: upper clip range; ``None`` = ``epsilon``.
        cliprange_value: clip range of the value update around the rollout's values.
        vf_coef: weight of the value loss.
        ppo_epochs: passes over each Experience (each takes ``num_mini_batches`` steps).
        kl_coef: initial weight of the per-token KL(pi_old || pi_ref) subtracted from the
            reward; 0 = no KL and no reference.
        kl_estimator: the per-token KL estimate in the reward: ``k1`` (log-ratio, the usual
            choice in RLHF PPO), ``k2`` or ``k3``.
        kl_target: adapt ``kl_coef`` towards this per-sequence KL (Ziegler et al., 2019);
            ``None`` keeps it fixed.
        kl_horizon: the adaptive controller's horizon, in samples.
        beta: weight of a KL to the reference in the loss (as GRPO); 0 = none.
        loss_kl_estimator: the KL in the loss per token: ``k3``, ``k1`` or ``k2``.
        value_model: ``None`` = a value adapter on the policy backbone (needs ``lora``); else
            a model name or directory for a separate critic. Unused without a critic.
        value_learning_rate: learning rate of the critic's parameters; ``None`` =
            ``learning_rate``.
        advantage_estimator: ``None`` = ``lit_rl.experience.GAE()`` (gamma 1, lambda 0.95,
            whitened advantages, a critic); a critic-free estimator trains no critic.
    """

    def __init__(
        self,
        *args: Any,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        ppo_epochs: int = 4,
        kl_coef: float = 0.05,
        kl_estimator: KLEstimator = "k1",
        kl_target: float | None = None,
        kl_horizon: int = 10_000,
        beta: float = 0.0,
        loss_kl_estimator: KLEstimator = "k3",
        value_model: str | None = None,
        value_learning_rate: float | None = None,
        advantage_estimator: AdvantageEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        checks = [
            (0 < epsilon < 1, f"epsilon must be in (0, 1), got {epsilon}"),
            (
                epsilon_high is None or epsilon_high > 0,
                f"epsilon_high must be > 0, got {epsilon_high}",
            ),
            (cliprange_value > 0, f"cliprange_value must be > 0, got {cliprange_value}"),
            (vf_coef > 0, f"vf_coef must be > 0, got {vf_coef}"),
            (ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {ppo_epochs}"),
            (beta >= 0 and kl_coef >= 0, f"beta and kl_coef must be >= 0, got {beta}, {kl_coef}"),
            (
                kl_target is None or kl_coef > 0,
                "kl_target adapts kl_coef multiplicatively: start from kl_coef > 0",
            ),
            (
                value_learning_rate is None or value_learning_rate > 0,
                f"value_learning_rate must be > 0, got {value_learning_rate}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PPOModule: {message}")
        estimator = advantage_estimator or GAE()
        check_estimator(estimator, self.num_generations, kl_coef)
        self.advantage_estimator = estimator
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.cliprange_value = cliprange_value
        self.vf_coef = vf_coef
        # Both losses average over counted tokens.
        self.policy_update.plan = dataclasses.replace(
            self.policy_update.plan, epochs=ppo_epochs, aggregation="token_mean"
        )
        self.kl_estimator = kl_estimator
        self.kl_controller = AdaptiveKLController(kl_coef, kl_target, kl_horizon)
        self.beta = beta
        self.loss_kl_estimator = loss_kl_estimator
        self.value_learning_rate = value_learning_rate
        recipe = self.model_recipe
        if estimator.needs_values and value_model is None and recipe.lora is None:
            raise ValueError(
                "PPOModule's critic is a value adapter on the policy's backbone, which "
                "needs LoRA: set lora, or name a separate value_model (a model name or "
                "directory)"
            )
        self.model_recipe = dataclasses.replace(
            recipe,
            reference=kl_coef > 0 or beta > 0,  # pi_ref: the adapters off, or a frozen copy
            critic=(value_model or "adapter") if estimator.needs_values else None,
        )

    @property
    def kl_coef(self) -> float:
        """The KL coefficient of the next rollout, as the controller has adapted it."""
        return self.kl_controller.coef

    def trainable_parameter_groups(self) -> list[dict[str, Any]]:
        models = self._built_models()
        if not models.has_critic:
            return super().trainable_parameter_groups()
        value_group: dict[str, Any] = {"params": models.critic_parameters()}
        if self.value_learning_rate is not None:
            value_group["lr"] = self.value_learning_rate
        return [{"params": models.policy_parameters()}, value_group]

    def accumulate_gradients(self, micro: Experience, weight: float) -> MicroBatchLoss:
        """The clipped surrogate on one micro-batch (and the clipped value loss with a
        critic), each backward ``weight`` x it."""
        mask = micro.loss_mask
        logprobs, entropy = self.policy_logprobs(micro.sequences, with_entropy=True)
        # On-policy (one optimizer step) pi_old is pi itself, detached: the ratio is 1.
        old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        correction = self.sampler_correction.weights(
            old_logprobs, micro.sampler_logprobs, micro.completion_mask
        )
        policy_loss, policy_stats = ppo_policy_loss(
            logprobs,
            old_logprobs,
            micro.advantages,
            mask,
            self.epsilon,
            self.epsilon_high,
            sampler_weights=correction,
            ref_logprobs=micro.ref_logprobs,
            beta=self.beta,
            kl_estimator=self.loss_kl_estimator,
        )
        # Policy and critic touch disjoint parameters: two backward passes keep only one
        # forward graph alive at a time (peak memory of one pass, not both).
        self.manual_backward(policy_loss * weight)
        stats = {
            "loss": policy_loss.detach(),
            "policy_loss": policy_loss.detach(),
            "entropy": masked_mean(entropy, mask),
            **policy_stats,
        }
        models = self._built_models()
        if models.has_critic:
            values = models.values(micro.sequences)
            critic_loss, value_stats = value_loss(
                values, micro.values, micro.returns, mask, self.cliprange_value
            )
            self.manual_backward(self.vf_coef * critic_loss * weight)
            stats |= {
                "loss": policy_loss.detach() + self.vf_coef * critic_loss.detach(),
                "value_loss": critic_loss.detach(),
                **value_stats,
            }
        return MicroBatchLoss(stats, logprobs.detach())

    def after_update(self, experience: Experience) -> None:
        mask = experience.completion_mask
        if experience.values is not None:
            self.log(
                "train/vf_explained_var",
                explained_variance(
                    experience.values, experience.returns, mask, across_processes=True
                ),
                batch_size=len(experience),
            )
        if experience.kl is not None:
            # The controller adapts to the KL of the global batch: every process's sequences.
            kl = (experience.kl * mask).sum()
            kl_sum = all_reduce_sum(torch.stack([kl, kl.new_tensor(len(experience))]).float())
            num_sequences = int(kl_sum[1])
            self.kl_controller.update(float(kl_sum[0]) / num_sequences, num_sequences)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["kl_coef"] = self.kl_controller.coef

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        require_keys(checkpoint, ["kl_coef"], type(self).__name__)
        self.kl_controller.coef = checkpoint["kl_coef"]
