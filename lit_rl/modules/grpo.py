"""GRPOModule: Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath §4.1)."""

from typing import Any

import torch

from lit_rl.algorithms import LossType, group_normalized_advantages, grpo_loss, masked_mean
from lit_rl.modules.base import PolicyModule
from lit_rl.types import RolloutBatch


class GRPOModule(PolicyModule):
    """The training step of GRPO: logprobs -> ``grpo_loss`` -> optimizer step -> log.

    Rollouts (G completions per prompt, rewards, advantages, reference logprobs) arrive
    ready-made in ``batch["rollout"]`` from ``lit_rl.callbacks.RolloutCallback``.

    Args (beyond ``PolicyModule``'s; names as in TRL's GRPOConfig):
        epsilon: lower clip range of the ratio (and upper, unless ``epsilon_high``).
        epsilon_high: upper clip range (DAPO's clip-higher); ``None`` = ``epsilon``.
        loss_type: ``grpo`` (DeepSeekMath Eq. 3), ``dr_grpo`` or ``dapo`` aggregation.
        scale_rewards: divide group-centred rewards by the group std (``False`` = Dr. GRPO).
        num_iterations: mu, optimizer steps on each rollout batch.
    """

    def __init__(
        self,
        *args: Any,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: LossType = "grpo",
        scale_rewards: bool = True,
        num_iterations: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < epsilon < 1 or (epsilon_high is not None and epsilon_high <= 0):
            raise ValueError(
                f"epsilon must be in (0, 1) and epsilon_high > 0, got {epsilon}, {epsilon_high}"
            )
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards
        self.num_iterations = num_iterations

    @property
    def needs_old_logprobs(self) -> bool:
        # With mu = 1 the single update is on-policy: pi_old = pi (detached), ratio = 1, and
        # the extra forward pass TRL also skips is saved.
        return self.num_iterations > 1

    def compute_advantages(self, rewards: torch.Tensor) -> torch.Tensor:  # [N] -> [N]
        return group_normalized_advantages(
            rewards, self.num_generations, scale_by_std=self.scale_rewards
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rollout: RolloutBatch | None = batch.get("rollout")
        if rollout is None:
            raise RuntimeError(
                "GRPOModule trains on rollouts: add lit_rl.callbacks.RolloutCallback "
                "to trainer.callbacks"
            )
        for _ in range(self.num_iterations):
            logprobs, entropy = self.rollout_logprobs(self.policy, rollout, with_entropy=True)
            old_logprobs = (
                rollout.old_logprobs if rollout.old_logprobs is not None else logprobs.detach()
            )
            loss, stats = grpo_loss(
                logprobs,
                old_logprobs,
                rollout.ref_logprobs,
                rollout.advantages,
                rollout.completion_mask,
                epsilon=self.epsilon,
                epsilon_high=self.epsilon_high,
                beta=self.beta,
                loss_type=self.loss_type,
            )
            grad_norm = self.optimizer_step_on(loss)
            size = rollout.completion_mask.shape[0]
            self.log("train/loss", loss.detach(), batch_size=size)
            self.log("train/grad_norm", grad_norm, batch_size=size)
            self.log(
                "train/entropy", masked_mean(entropy, rollout.completion_mask), batch_size=size
            )
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=size)
            for name, value in stats.items():
                self.log(f"train/{name}", value, batch_size=size, prog_bar=name == "kl")
