"""RolloutCallback: sample, score and prepare the rollouts each GRPO/PPO step trains on."""

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.rollout import HFGenerateEngine, RolloutEngine
from lit_rl.types import RolloutBatch

_PROTOCOL = (
    "policy",
    "tokenizer",
    "num_generations",
    "sampling",
    "eos_token_ids",
    "decode_completions",
    "score",
    "compute_advantages",
    "needs_old_logprobs",
    "old_logprobs",
    "reference_logprobs",
)


class RolloutCallback(Callback):
    """Before every training step: G completions per prompt, their rewards and advantages,
    old (when needed) and reference logprobs, handed over as ``batch["rollout"]``.

    Args:
        engine: how completions are sampled; ``HFGenerateEngine`` (transformers ``generate``)
            by default, a vLLM engine on GPUs.
    """

    def __init__(self, engine: RolloutEngine | None = None) -> None:
        self.engine = engine or HFGenerateEngine()
        self.num_rollouts = 0  # batches sampled so far; in checkpoints

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = [name for name in _PROTOCOL if not hasattr(pl_module, name)]
        if missing:
            raise TypeError(
                f"RolloutCallback drives modules derived from lit_rl.modules.PolicyModule; "
                f"{type(pl_module).__name__} lacks {missing}"
            )
        self._check_context(trainer, pl_module)

    @staticmethod
    def _check_context(trainer: Trainer, pl_module: LightningModule) -> None:
        """Prompt + completion must fit the model's context window."""
        context = getattr(pl_module.policy.config, "max_position_embeddings", None)
        max_prompt = (
            getattr(trainer.datamodule, "max_prompt_length", None) if trainer.datamodule else None
        )
        if context is None or max_prompt is None:
            return
        needed = max_prompt + pl_module.sampling.max_new_tokens
        if needed > context:
            raise ValueError(
                f"max_prompt_length ({max_prompt}) + max_completion_length "
                f"({pl_module.sampling.max_new_tokens}) = {needed} exceeds the model's context of "
                f"{context} tokens: lower one of them"
            )

    @torch.no_grad()
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict[str, Any], batch_idx: int
    ) -> None:
        start = time.perf_counter()
        group_size = pl_module.num_generations
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        completion_ids = self.engine.generate(
            pl_module.policy,
            prompt_ids,
            prompt_mask,
            group_size,
            pl_module.sampling,
            pl_module.tokenizer.pad_token_id,
            pl_module.eos_token_ids,
        )
        generation_time = time.perf_counter() - start
        completion_mask, completions = pl_module.decode_completions(completion_ids)
        # Dataset fields, repeated so that row i describes completion i (prompt-major).
        fields = {
            key: [v for v in values for _ in range(group_size)]
            for key, values in batch.items()
            if isinstance(values, list)
        }
        reward = pl_module.score(
            fields["prompt"], completions, fields, f"training batch {batch_idx}"
        )
        rewards = reward.total.to(prompt_ids.device)
        rollout = RolloutBatch(
            input_ids=torch.cat(
                [prompt_ids.repeat_interleave(group_size, 0), completion_ids], dim=1
            ),
            attention_mask=torch.cat(
                [prompt_mask.repeat_interleave(group_size, 0), torch.ones_like(completion_ids)],
                dim=1,
            ),
            completion_mask=completion_mask,
            rewards=rewards,
            advantages=pl_module.compute_advantages(rewards),
            old_logprobs=None,
            ref_logprobs=None,
            reward_components=reward.components,
            prompts=fields["prompt"],
            completions=completions,
        )
        if pl_module.needs_old_logprobs:
            rollout.old_logprobs = pl_module.old_logprobs(rollout)
        rollout.ref_logprobs = pl_module.reference_logprobs(rollout)
        batch["rollout"] = rollout
        self.num_rollouts += 1
        self._log(pl_module, rollout, group_size, generation_time, time.perf_counter() - start)

    def _log(
        self,
        pl_module: LightningModule,
        rollout: RolloutBatch,
        group_size: int,
        generation_time: float,
        rollout_time: float,
    ) -> None:
        size = rollout.rewards.shape[0]
        group_std = rollout.rewards.view(-1, group_size).std(dim=1)
        lengths = rollout.completion_mask.sum(1).float()
        truncated = ~torch.isin(rollout.input_ids[:, -1], torch.tensor(pl_module.eos_token_ids))
        truncated &= rollout.completion_mask[:, -1]
        stats = {
            "rollout/reward": rollout.rewards.mean(),
            "rollout/reward_std": group_std.mean(),
            "rollout/zero_std_fraction": (group_std == 0).float().mean(),
            "rollout/completion_len": lengths.mean(),
            "rollout/truncated_fraction": truncated.float().mean(),
            "rollout/generation_time": torch.tensor(generation_time),
            "rollout/time": torch.tensor(rollout_time),
        }
        stats.update(
            {f"rollout/reward/{k}": v.mean() for k, v in rollout.reward_components.items()}
        )
        for name, value in stats.items():
            pl_module.log(name, value.float(), batch_size=size, prog_bar=name == "rollout/reward")

    def state_dict(self) -> dict[str, Any]:
        # The sampling RNG travels with the checkpoint so a resumed run draws the same rollouts.
        return {"num_rollouts": self.num_rollouts, "torch_rng_state": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_rollouts = state_dict["num_rollouts"]
        torch.set_rng_state(state_dict["torch_rng_state"])
