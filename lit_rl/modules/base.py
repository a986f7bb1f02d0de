"""PolicyModule: what every RL LightningModule shares (policy, reference, reward, optimizer,
log-probabilities, greedy evaluation). Algorithms subclass it and add advantages + a loss."""

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from peft import LoraConfig
from torch import nn

from lit_rl.algorithms import token_logprobs_with_entropy
from lit_rl.models import (
    DType,
    apply_lora,
    frozen_copy,
    load_model,
    load_tokenizer,
    reference_model,
    resolve_dtype,
)
from lit_rl.rewards import RewardFn, RewardOutput, check_reward_output
from lit_rl.rollout import HFGenerateEngine, SamplingParams, completion_mask_from_eos
from lit_rl.types import RolloutBatch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:  # [N, L]
    """Positions that skip left padding, matching what ``generate`` used while sampling."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyModule(LightningModule):
    """Holds the policy (optionally LoRA), its reference and the reward.

    Training uses manual optimisation: one rollout batch can feed several optimizer steps
    (``num_iterations``, PPO epochs), which Lightning's one-batch-one-step loop cannot express.

    Args:
        model: ``embedded`` (SmolLM2-135M-Instruct), a local HF directory, or a hub id.
        reward: scores completions; any ``lit_rl.rewards.Reward`` by ``class_path``.
        lora: a peft ``LoraConfig``; ``None`` = full fine-tuning with a frozen reference copy.
        dtype: weights dtype. ``auto`` = ``bfloat16`` where the hardware computes it fast
            (CUDA with bf16, CPUs with AMX or avx512_bf16) and the weights are frozen under
            LoRA, else ``float32``; the choice and its reason are logged at start. An explicit
            dtype always wins. LoRA adapters and log-probabilities are always float32.
        num_generations: G, completions sampled per prompt.
        max_completion_length: T, new tokens per completion at most.
        temperature: sampling temperature (logprobs are of the tempered distribution).
        top_p: nucleus sampling; 1.0 samples the full distribution.
        beta: weight of the KL to the reference; 0 skips the reference entirely.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        max_grad_norm: gradient clipping by global norm; 0 disables.
        logprob_chunk_size: rows of float32 logits materialised at a time.
    """

    def __init__(
        self,
        reward: RewardFn,
        model: str = "embedded",
        lora: LoraConfig | None = None,
        dtype: DType = "auto",
        num_generations: int = 8,
        max_completion_length: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        beta: float = 0.04,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        logprob_chunk_size: int = 256,
    ) -> None:
        super().__init__()
        checks = [
            (
                num_generations >= 2,
                f"num_generations must be >= 2 to form groups, got {num_generations}",
            ),
            (
                max_completion_length >= 1,
                f"max_completion_length must be >= 1, got {max_completion_length}",
            ),
            (temperature > 0, f"temperature must be > 0, got {temperature}"),
            (0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
            (beta >= 0, f"beta must be >= 0, got {beta}"),
            (learning_rate > 0, f"learning_rate must be > 0, got {learning_rate}"),
            (warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}"),
            (
                max_grad_norm >= 0,
                f"max_grad_norm must be >= 0 (0 = no clipping), got {max_grad_norm}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")
        self.save_hyperparameters(ignore=["reward"])
        self.automatic_optimization = False
        self.reward = reward
        self.tokenizer = load_tokenizer(model)
        weights_dtype = resolve_dtype(dtype, trains_weights=lora is None)
        rank_zero_info(f"lit_rl: {weights_dtype.name} weights ({weights_dtype.reason})")
        policy = load_model(model, dtype=weights_dtype.name)
        self.policy: nn.Module = apply_lora(policy, lora) if lora is not None else policy
        # With LoRA the reference is the policy with adapters off; otherwise a frozen copy,
        # registered as a submodule so checkpoints keep it (ReferenceSyncCallback changes it).
        needs_copy = beta > 0 and lora is None
        self.reference: nn.Module | None = frozen_copy(self.policy) if needs_copy else None
        self.num_generations = num_generations
        self.beta = beta
        self.sampling = SamplingParams(max_completion_length, temperature, top_p, do_sample=True)
        self.eos_token_ids = self._eos_token_ids()

    # ---- the small protocol callbacks drive the module through ----------------------------

    def train(self, mode: bool = True) -> "PolicyModule":
        super().train(mode)
        # The policy never runs dropout: pi_old, pi and pi_ref must score the same tokens with
        # the same function, or the ratio and the KL measure noise.
        self.policy.eval()
        return self

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether pi_old must be computed before the first update (else ratio = 1 exactly)."""
        return False

    def score(
        self, prompts: list[str], completions: list[str], batch: dict[str, list[Any]], where: str
    ) -> RewardOutput:
        output = self.reward(prompts, completions, batch)
        return check_reward_output(output, self.reward, len(completions), where)

    def compute_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_completions(
        self,
        completion_ids: torch.Tensor,  # [N, T]
    ) -> tuple[torch.Tensor, list[str]]:  # ([N, T] bool, N texts)
        """The completion mask (through the first EOS) and the texts the reward sees."""
        mask = completion_mask_from_eos(completion_ids, self.eos_token_ids)
        texts = self.tokenizer.batch_decode(
            torch.where(mask, completion_ids, self.tokenizer.pad_token_id), skip_special_tokens=True
        )
        return mask, texts

    def _eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        generation_eos = getattr(
            getattr(self.policy, "generation_config", None), "eos_token_id", None
        )
        ids |= set(generation_eos) if isinstance(generation_eos, list) else {generation_eos}
        return sorted(i for i in ids if i is not None)

    def completion_logits(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,  # [N, P+T]
        attention_mask: torch.Tensor,  # [N, P+T]
        num_completion_tokens: int,
    ) -> torch.Tensor:  # [N, T, V]
        """Logits predicting each completion token; only the last T+1 positions are projected
        to the vocabulary (``logits_to_keep``), the prompt's are never computed."""
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=num_completion_tokens + 1,
            use_cache=False,
        )
        return output.logits[:, :-1]

    def rollout_logprobs(
        self, model: nn.Module, rollout: RolloutBatch, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token logprobs [N, T] of the rollout's completions under ``model`` (and the
        entropy [N, T] of its token distributions when asked)."""
        num_tokens = rollout.completion_length
        logits = self.completion_logits(
            model, rollout.input_ids, rollout.attention_mask, num_tokens
        )
        labels = rollout.input_ids[:, -num_tokens:]
        temperature, chunk = self.sampling.temperature, self.hparams.logprob_chunk_size
        return token_logprobs_with_entropy(logits, labels, temperature, chunk, with_entropy)

    @torch.no_grad()
    def reference_logprobs(self, rollout: RolloutBatch) -> torch.Tensor | None:  # [N, T]
        if self.beta == 0:
            return None
        with reference_model(self.policy, self.reference) as reference:
            return self.rollout_logprobs(reference, rollout)[0]

    @torch.no_grad()
    def old_logprobs(self, rollout: RolloutBatch) -> torch.Tensor:  # [N, T]
        return self.rollout_logprobs(self.policy, rollout)[0]

    # ---- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        warmup = self.hparams.warmup_steps
        schedule: Callable[[int], float] = lambda step: min(1.0, (step + 1) / (warmup + 1))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def optimizer_step_on(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip, step the optimizer and the schedule; returns the gradient norm."""
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.hparams.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scheduler.step()
        return grad_norm

    # ---- evaluation: greedy completions on held-out prompts -------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        greedy = SamplingParams(self.sampling.max_new_tokens, do_sample=False)
        completion_ids = HFGenerateEngine().generate(
            self.policy,
            batch["input_ids"],
            batch["attention_mask"],
            1,
            greedy,
            self.tokenizer.pad_token_id,
            self.eos_token_ids,
        )
        mask, completions = self.decode_completions(completion_ids)
        fields = {k: v for k, v in batch.items() if isinstance(v, list)}
        output = self.score(batch["prompt"], completions, fields, f"validation batch {batch_idx}")
        size = len(completions)
        self.log("val/reward", output.total.mean(), batch_size=size, prog_bar=True)
        for name, values in output.components.items():
            self.log(f"val/reward/{name}", values.mean(), batch_size=size)
        self.log("val/completion_len", mask.sum(1).float().mean(), batch_size=size)
