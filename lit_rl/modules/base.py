"""PolicyModule: what every RL LightningModule shares (policy, reference, reward, optimizer,
log-probabilities, the update loop over one Experience, greedy evaluation). Algorithms subclass
it and add their advantage estimator and loss."""

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from peft import LoraConfig, PeftModel
from torch import nn

from lit_rl.algorithms import Aggregation, micro_batch_weight, token_logprobs_with_entropy
from lit_rl.experience import (
    EXPERIENCE_KEY,
    AdvantageEstimator,
    Experience,
    ExperienceSpec,
    TokenScores,
)
from lit_rl.models import (
    DType,
    apply_lora,
    arm_checkpointed_layers,
    enable_activation_checkpointing,
    frozen_copy,
    load_model,
    load_tokenizer,
    lora_config_dict,
    reference_model,
    resolve_dtype,
)
from lit_rl.rewards import RewardFn, RewardOutput, check_reward_output
from lit_rl.rollout import (
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    default_engine,
    position_ids_from_mask,
)


class PolicyModule(LightningModule):
    """Holds the policy (optionally LoRA), its reference and the reward, and implements the
    ``lit_rl.experience.ExperienceModule`` contract the rollout callback drives.

    Training uses manual optimisation: one Experience feeds ``update_epochs`` x
    ``num_mini_batches`` optimizer steps, which Lightning's one-batch-one-step loop cannot
    express. ``trainer.global_step`` counts optimizer steps.

    Args:
        reward: scores completions; any ``lit_rl.rewards.Reward`` by ``class_path``.
        model: ``embedded`` (SmolLM2-135M-Instruct), a local HF directory, or a hub id.
        lora: a peft ``LoraConfig``; ``None`` = full fine-tuning with a frozen reference copy.
        dtype: weights dtype. ``auto`` = ``bfloat16`` where the hardware computes it fast
            (CUDA with bf16, CPUs with AMX or avx512_bf16) and the weights are frozen under
            LoRA, else ``float32``; the choice and its reason are logged at start. An explicit
            dtype always wins. LoRA adapters and log-probabilities are always float32.
        num_generations: G, completions sampled per prompt.
        max_completion_length: T, new tokens per completion at most.
        temperature: sampling temperature (logprobs are of the tempered distribution).
        top_p: nucleus sampling; 1.0 samples the full distribution.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        max_grad_norm: gradient clipping by global norm; 0 disables.
        num_mini_batches: optimizer steps per pass over one Experience; its rows are shuffled
            and cut into this many minibatches (it must divide the rollouts of a step,
            prompts per batch x num_generations).
        gradient_accumulation_steps: micro-batches per minibatch, to bound memory; the
            accumulated gradient equals the minibatch's (weighted by the loss aggregation).
        activation_checkpointing: recompute each decoder layer's activations in the backward
            pass instead of storing them: less peak memory for more update time (see
            docs/benchmarks.md); dropout stays off either way.
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
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        num_mini_batches: int = 1,
        gradient_accumulation_steps: int = 1,
        activation_checkpointing: bool = False,
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
            (learning_rate > 0, f"learning_rate must be > 0, got {learning_rate}"),
            (warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}"),
            (
                max_grad_norm >= 0,
                f"max_grad_norm must be >= 0 (0 = no clipping), got {max_grad_norm}",
            ),
            (num_mini_batches >= 1, f"num_mini_batches must be >= 1, got {num_mini_batches}"),
            (
                gradient_accumulation_steps >= 1,
                f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")
        # Objects stay out of the checkpoint's hyperparameters, which load with weights_only.
        self.save_hyperparameters(ignore=["reward", "advantage_estimator", "lora"])
        self.hparams["lora"] = None if lora is None else lora_config_dict(lora)
        self.automatic_optimization = False
        self.reward = reward
        self.tokenizer = load_tokenizer(model)
        weights_dtype = resolve_dtype(dtype, trains_weights=lora is None)
        rank_zero_info(f"lit_rl: {weights_dtype.name} weights ({weights_dtype.reason})")
        policy = load_model(model, dtype=weights_dtype.name)
        self.policy: nn.Module = apply_lora(policy, lora) if lora is not None else policy
        if activation_checkpointing:
            enable_activation_checkpointing(self.policy)
        self.reference: nn.Module | None = None  # see use_reference()
        self.uses_reference = False
        self.num_generations = num_generations
        self.num_mini_batches = num_mini_batches
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.sampling = SamplingParams(max_completion_length, temperature, top_p, do_sample=True)
        self.eos_token_ids = self._eos_token_ids()
        # Minibatch shuffling has its own RNG (in checkpoints), so it never shifts sampling.
        self.shuffle_generator = torch.Generator().manual_seed(0)
        # Greedy completions in validation; default_engine(device) unless set before fit.
        self.evaluation_engine: RolloutEngine | None = None

    def use_reference(self) -> None:
        """Give the algorithm a reference policy pi_ref. With LoRA it is the policy with its
        adapters off (no copy); otherwise a frozen copy, registered as a submodule so
        checkpoints keep it (``ReferenceSyncCallback`` changes it)."""
        self.uses_reference = True
        if not isinstance(self.policy, PeftModel):
            self.reference = frozen_copy(self.policy)

    # ---- what an algorithm sets in its __init__ and defines ------------------------------

    advantage_estimator: AdvantageEstimator
    update_epochs: int  # passes over each Experience (GRPO's mu, PPO's epochs)
    loss_aggregation: Aggregation  # how the loss reduces over tokens: weighs accumulation

    def accumulate_gradients(self, micro: Experience, weight: float) -> dict[str, torch.Tensor]:
        """Backward ``weight`` x the loss of one micro-batch; return its scalar statistics."""
        raise NotImplementedError

    # ---- the ExperienceModule contract the rollout callback drives ------------------------

    def train(self, mode: bool = True) -> "PolicyModule":
        super().train(mode)
        # The policy never runs dropout: pi_old, pi and pi_ref must score the same tokens with
        # the same function, or the ratio and the KL measure noise.
        self.policy.eval()
        return self

    def setup(self, stage: str) -> None:
        if self.evaluation_engine is None:
            self.evaluation_engine = default_engine(self.trainer.strategy.root_device)

    def on_fit_start(self) -> None:
        # Lightning keeps the modes modules were built in (it never calls train() at fit
        # start), and peft builds LoRA dropout in training mode: set the modes here, once every
        # module (a PPO critic's adapter included) exists.
        self.train()

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether pi_old must be computed at rollout time. With one optimizer step per
        Experience the update is on-policy: pi_old = pi (detached), ratio = 1 exactly, and the
        extra forward pass TRL also skips is saved."""
        return self.update_epochs * self.num_mini_batches > 1

    def experience_spec(self) -> ExperienceSpec:
        return ExperienceSpec(
            num_generations=self.num_generations,
            sampling=self.sampling,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_ids=tuple(self.eos_token_ids),
            estimator=self.advantage_estimator,
        )

    def score(
        self, prompts: list[str], completions: list[str], batch: dict[str, list[Any]], where: str
    ) -> RewardOutput:
        output = self.reward(prompts, completions, batch)
        return check_reward_output(output, self.reward, len(completions), where)

    @torch.no_grad()
    def score_tokens(
        self,
        input_ids: torch.Tensor,  # [N, P+T]
        attention_mask: torch.Tensor,  # [N, P+T]
        num_completion_tokens: int,
    ) -> TokenScores:
        old = None
        if self.needs_old_logprobs:
            old = self.sequence_logprobs(
                self.policy, input_ids, attention_mask, num_completion_tokens
            )[0]
        return TokenScores(
            old_logprobs=old,
            ref_logprobs=self.reference_logprobs(input_ids, attention_mask, num_completion_tokens),
            values=None,
        )

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

    # ---- log-probabilities ----------------------------------------------------------------

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

    def sequence_logprobs(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,  # [N, P+T]
        attention_mask: torch.Tensor,  # [N, P+T]
        num_completion_tokens: int,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
        """Per-token logprobs of the last ``num_completion_tokens`` tokens under ``model`` (and
        the entropy of its token distributions when asked)."""
        logits = self.completion_logits(model, input_ids, attention_mask, num_completion_tokens)
        labels = input_ids[:, -num_completion_tokens:]
        temperature, chunk = self.sampling.temperature, self.hparams.logprob_chunk_size
        return token_logprobs_with_entropy(logits, labels, temperature, chunk, with_entropy)

    def policy_logprobs(
        self, experience: Experience, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
        return self.sequence_logprobs(
            self.policy,
            experience.input_ids,
            experience.attention_mask,
            experience.num_completion_tokens,
            with_entropy,
        )

    @torch.no_grad()
    def reference_logprobs(
        self,
        input_ids: torch.Tensor,  # [N, P+T]
        attention_mask: torch.Tensor,  # [N, P+T]
        num_completion_tokens: int,
    ) -> torch.Tensor | None:  # [N, T]
        if not self.uses_reference:
            return None
        with reference_model(self.policy, self.reference) as reference:
            return self.sequence_logprobs(
                reference, input_ids, attention_mask, num_completion_tokens
            )[0]

    # ---- optimisation over one Experience -------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        experience: Experience | None = batch.get(EXPERIENCE_KEY)
        if experience is None:
            raise RuntimeError(
                f"{type(self).__name__} trains on rollouts: add "
                "lit_rl.callbacks.RolloutCallback to trainer.callbacks"
            )
        if len(experience) % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches={self.num_mini_batches} does not divide the "
                f"{len(experience)} rollouts of a step (prompts per batch x num_generations): "
                "choose a divisor, so every optimizer step sees as many rollouts"
            )
        if self.hparams.activation_checkpointing:
            # Every eval() (generation's included) disarms the layers; arm them for the update.
            arm_checkpointed_layers(self.policy)
        # One unshuffled minibatch is the whole batch; shuffling would only change float order.
        generator = self.shuffle_generator if self.num_mini_batches > 1 else None
        totals: dict[str, float] = defaultdict(float)
        num_steps = 0
        for _ in range(self.update_epochs):
            for minibatch in experience.minibatches(self.num_mini_batches, generator):
                self.optimizers().zero_grad(set_to_none=True)
                for micro in minibatch.split(min(self.gradient_accumulation_steps, len(minibatch))):
                    weight = micro_batch_weight(
                        micro.completion_mask, minibatch.completion_mask, self.loss_aggregation
                    )
                    for name, value in self.accumulate_gradients(micro, weight).items():
                        totals[name] += weight * float(value)
                totals["grad_norm"] += float(self.step_optimizer())
                num_steps += 1
        # Logged once per Experience: each metric averaged over its optimizer steps.
        for name, total in totals.items():
            self.log(
                f"train/{name}",
                total / num_steps,
                batch_size=len(experience),
                prog_bar=name == "kl",
            )
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=len(experience))
        self.on_experience_used(experience)

    def on_experience_used(self, experience: Experience) -> None:
        """Called after the updates on ``experience`` (PPO adapts its KL coefficient here)."""

    def trainable_parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups; a group without ``lr`` uses ``learning_rate``."""
        return [{"params": [p for p in self.policy.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.trainable_parameter_groups(),
            lr=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
        )
        warmup = self.hparams.warmup_steps
        schedule: Callable[[int], float] = lambda step: min(1.0, (step + 1) / (warmup + 1))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def step_optimizer(self) -> torch.Tensor:
        """Clip the accumulated gradients, step the optimizer and the schedule; returns the
        gradient norm before clipping."""
        optimizer = self.optimizers()
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        max_norm = self.hparams.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        self.lr_schedulers().step()
        return grad_norm

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["shuffle_generator"] = self.shuffle_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "shuffle_generator" in checkpoint:
            self.shuffle_generator.set_state(checkpoint["shuffle_generator"])

    # ---- evaluation: greedy completions on held-out prompts -------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        greedy = SamplingParams(self.sampling.max_new_tokens, do_sample=False)
        completion_ids = self.evaluation_engine.generate(
            self.policy,
            batch["input_ids"],
            batch["attention_mask"],
            1,
            greedy,
            self.tokenizer.pad_token_id,
            self.eos_token_ids,
        ).completion_ids
        mask, completions = self.decode_completions(completion_ids)
        fields = {k: v for k, v in batch.items() if isinstance(v, list)}
        output = self.score(batch["prompt"], completions, fields, f"validation batch {batch_idx}")
        size = len(completions)
        self.log("val/reward", output.total.mean(), batch_size=size, prog_bar=True)
        for name, values in output.components.items():
            self.log(f"val/reward/{name}", values.mean(), batch_size=size)
        self.log("val/completion_len", mask.sum(1).float().mean(), batch_size=size)
