"""PolicyModule: what every RL LightningModule shares (the models, the rollout engine, the
reward, the optimizer, the update loop over one Experience, held-out evaluation). Algorithms
subclass it and add their advantage estimator and loss; the networks live in
``lit_rl.models.PolicyModels``, built in ``configure_model``."""

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import LoraConfig
from torch import nn

from lit_rl.algorithms import (
    SAMPLER_CORRECTIONS,
    Aggregation,
    SamplerCorrection,
    aggregation_count,
    all_reduce_sum,
    micro_batch_weight,
    sampler_correction_weights,
)
from lit_rl.errors import is_input_error
from lit_rl.evaluation import EvaluationMetrics, EvaluationPlan, evaluate_batch
from lit_rl.experience import (
    EXPERIENCE_KEY,
    AdvantageEstimator,
    Experience,
    ExperienceSpec,
    TokenScores,
)
from lit_rl.models import (
    DType,
    ModelRecipe,
    PolicyModels,
    Sequences,
    arm_checkpointed_layers,
    load_tokenizer,
    lora_config_dict,
    resolve_dtype,
)
from lit_rl.rewards import (
    RewardFn,
    RewardOutput,
    check_reward_output,
    reward_fields,
    reward_name,
)
from lit_rl.rollout import (
    EngineSession,
    Generation,
    GenerationRequest,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    default_engine,
)
from lit_rl.strategies import (
    FSDP2Strategy,
    clip_grad_norm_,
    gathered_weights,
    optimizer_state_by_name,
    optimizer_state_by_position,
)


class PolicyModule(LightningModule):
    """Holds the policy (optionally LoRA), its reference and the reward, and implements the
    ``lit_rl.experience.ExperienceModule`` contract the rollout callback drives.

    Training uses manual optimisation: one Experience feeds ``update_epochs`` x
    ``num_mini_batches`` optimizer steps, which Lightning's one-batch-one-step loop cannot
    express. ``trainer.global_step`` counts optimizer steps. The models are built in
    ``configure_model`` (the Trainer calls it; call it yourself to use a module alone), where
    ``lit_rl.strategies.FSDP2Strategy`` shards them; on several processes each one trains
    on its own prompts and every quantity defined over the batch is reduced across them.

    Args:
        reward: scores completions; any ``lit_rl.rewards.Reward`` by ``class_path``.
        model: ``embedded`` (SmolLM2-135M-Instruct), a local HF directory, or a hub id.
        lora: a peft ``LoraConfig``; ``None`` = full fine-tuning with a frozen reference copy.
        dtype: weights dtype. ``auto`` = ``bfloat16`` where the hardware computes it fast
            (CUDA with bf16, CPUs with AMX or avx512_bf16) and the weights are frozen under
            LoRA, else ``float32``; the choice and its reason are logged at start. An explicit
            dtype always wins. LoRA adapters and log-probabilities are always float32.
        num_generations: G, completions sampled per prompt; >= 2 for estimators that compare
            a prompt's completions (all but GAE and REINFORCE++ without a baseline).
        max_completion_length: T, new tokens per completion at most.
        temperature: sampling temperature (logprobs are of the tempered distribution).
        top_p: nucleus sampling; 1.0 samples the full distribution.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        max_grad_norm: gradient clipping by global norm; 0 disables.
        num_mini_batches: optimizer steps per pass over one Experience; its rows are shuffled
            and cut into this many minibatches, whose sizes differ by at most one row when it
            does not divide the rollouts of a step (prompts per batch x num_generations).
        gradient_accumulation_steps: micro-batches per minibatch, to bound memory; the
            accumulated gradient equals the minibatch's (weighted by the loss aggregation).
            The default 2 halves the update's saved activations, which set a CPU step's peak
            memory, for ~5% of the update's time (docs/benchmarks.md).
        activation_checkpointing: recompute each decoder layer's activations in the backward
            pass instead of storing them: less peak memory for more update time (see
            docs/benchmarks.md); dropout stays off either way.
        logprob_chunk_size: rows of float32 logits materialised at a time.
        engine: the run's one rollout engine, used by rollouts and evaluation alike; any
            ``lit_rl.rollout.RolloutEngine`` by ``class_path``. ``None`` =
            ``lit_rl.rollout.default_engine`` of the device (``PackedEngine`` on a CPU,
            ``HFGenerateEngine`` elsewhere); ``lit_rl.rollout.VLLMEngine`` on GPUs.
        evaluation: how validation scores the held-out split (greedy accuracy, pass@1,
            pass@n, maj@n; ``lit_rl.evaluation.EvaluationPlan``).
        sampler_correction: reweight the policy gradient for the gap between the engine's
            distribution and the trainer's (``none``, ``token_tis``, ``sequence_tis``,
            ``token_mask``, ``sequence_mask``; docs/rollout.md).
        sampler_correction_bounds: ``(low, high)``: the masks keep ratios in [low, high]; TIS
            truncates at high.
        overlong_buffer_length: DAPO's soft overlong punishment (Eq. 13): a completion longer
            than ``max_completion_length - overlong_buffer_length`` tokens loses reward
            linearly, down to ``-overlong_penalty_factor`` at the budget; 0 = off.
        overlong_penalty_factor: the penalty at the budget.
        mask_truncated_completions: leave completions that hit ``max_completion_length``
            without an EOS out of the loss (DAPO's overlong filtering).
        max_nonfinite_steps: an optimizer step whose gradient norm is NaN or infinite is
            skipped (weights and optimizer state untouched, counted in
            ``train/nonfinite_steps``); this many in a row stop the run with an error.
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
        gradient_accumulation_steps: int = 2,
        activation_checkpointing: bool = False,
        logprob_chunk_size: int = 256,
        engine: RolloutEngine | None = None,
        evaluation: EvaluationPlan | None = None,
        sampler_correction: SamplerCorrection = "none",
        sampler_correction_bounds: tuple[float, float] = (0.5, 2.0),
        overlong_buffer_length: int = 0,
        overlong_penalty_factor: float = 1.0,
        mask_truncated_completions: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        checks = [
            (
                max_nonfinite_steps >= 1,
                f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}",
            ),
            (num_generations >= 1, f"num_generations must be >= 1, got {num_generations}"),
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
            (
                sampler_correction in SAMPLER_CORRECTIONS,
                f"sampler_correction must be one of {SAMPLER_CORRECTIONS}, got "
                f"{sampler_correction!r}",
            ),
            (
                0 <= sampler_correction_bounds[0] < 1 < sampler_correction_bounds[1],
                "sampler_correction_bounds must be (low, high) with 0 <= low < 1 < high, got "
                f"{sampler_correction_bounds}",
            ),
            (
                0 <= overlong_buffer_length <= max_completion_length,
                "overlong_buffer_length must be in [0, max_completion_length="
                f"{max_completion_length}], got {overlong_buffer_length}",
            ),
            (
                overlong_penalty_factor >= 0,
                f"overlong_penalty_factor must be >= 0, got {overlong_penalty_factor}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")
        # Objects stay out of the checkpoint's hyperparameters, which load with weights_only.
        self.save_hyperparameters(
            ignore=["reward", "advantage_estimator", "lora", "engine", "evaluation"]
        )
        self.hparams["lora"] = None if lora is None else lora_config_dict(lora)
        self.automatic_optimization = False
        self.reward = reward
        self.tokenizer = load_tokenizer(model)
        self.lora = lora
        self.uses_reference = False  # see use_reference()
        self.critic: str | None = None  # "adapter" or a model name; set by algorithms
        self.models: PolicyModels | None = None  # built in configure_model
        self.num_generations = num_generations
        self.num_mini_batches = num_mini_batches
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.sampling = SamplingParams(max_completion_length, temperature, top_p, do_sample=True)
        self.eos_token_ids: list[int] = []  # the tokenizer's and the model's; configure_model
        # Minibatch shuffling has its own RNG (in checkpoints), so it never shifts sampling.
        self.shuffle_generator = torch.Generator().manual_seed(0)
        self.engine = engine  # None: default_engine(device), chosen in setup
        self.engine_session: EngineSession | None = None  # setup
        self.evaluation = evaluation or EvaluationPlan()
        self.eval_metrics = EvaluationMetrics(self.evaluation.num_samples)
        self.sampler_correction = sampler_correction
        self.nonfinite_steps = 0  # optimizer steps skipped for a NaN/inf gradient; in checkpoints
        self.nonfinite_in_a_row = 0

    def use_reference(self) -> None:
        """Give the algorithm a reference policy pi_ref: with LoRA the policy with its adapters
        off (no copy), otherwise a frozen copy (``ReferenceSyncCallback`` changes it)."""
        self.uses_reference = True

    def model_recipe(self) -> ModelRecipe:
        return ModelRecipe(
            model=self.hparams.model,
            lora=self.lora,
            dtype=self.hparams.dtype,
            activation_checkpointing=self.hparams.activation_checkpointing,
            reference=self.uses_reference,
            critic=self.critic,
        )

    def configure_model(self) -> None:
        """Build the models (once), and shard them when the strategy is FSDP2."""
        if self.models is not None:
            return
        # device_mesh is set by ModelParallelStrategy (and so FSDP2Strategy) alone.
        strategy = self.trainer.strategy if self.device_mesh is not None else None
        if isinstance(strategy, ModelParallelStrategy) and not isinstance(strategy, FSDP2Strategy):
            raise ValueError(
                "lit_rl shards its models with lit_rl.strategies.FSDP2Strategy (FSDP2 over all "
                "processes); a plain ModelParallelStrategy leaves the parallel plan to the "
                "module. Set trainer.strategy to lit_rl.strategies.FSDP2Strategy"
            )
        recipe = self.model_recipe()
        choice = resolve_dtype(recipe.dtype, trains_weights=recipe.lora is None)
        if choice.warning:
            rank_zero_warn(f"lit_rl: dtype {choice.name}: {choice.warning}")
        message = f"{choice.name} weights ({choice.reason})"
        if isinstance(strategy, FSDP2Strategy) and strategy.computes_in_bf16:
            recipe = dataclasses.replace(recipe, dtype=strategy.weights_dtype(recipe.dtype))
            message = f"{recipe.dtype} weights, bf16 compute (FSDP2 mixed precision)"
        rank_zero_info(f"lit_rl: {message}")
        models = PolicyModels.build(recipe)
        self.eos_token_ids = models.eos_token_ids(self.tokenizer.eos_token_id)
        if isinstance(strategy, FSDP2Strategy):
            strategy.parallelize(models)
        self.models = models

    @property
    def policy(self) -> nn.Module:
        """The policy network (``PeftModel`` under LoRA)."""
        return self._built_models().policy

    @property
    def reference(self) -> nn.Module | None:
        """The frozen reference copy of full fine-tuning; ``None`` with LoRA (adapters off)."""
        return self._built_models().reference

    def _built_models(self) -> PolicyModels:
        if self.models is None:
            raise RuntimeError(
                f"{type(self).__name__}'s models are built in configure_model, which the "
                "Trainer calls at fit/validate; call module.configure_model() to use it alone"
            )
        return self.models

    # ---- what an algorithm sets in its __init__ and defines ------------------------------

    advantage_estimator: AdvantageEstimator
    update_epochs: int  # passes over each Experience (GRPO's mu, PPO's epochs)
    loss_aggregation: Aggregation  # how the loss reduces over tokens: weighs accumulation

    def accumulate_gradients(
        self, micro: Experience, weight: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Backward ``weight`` x the loss of one micro-batch; return its scalar statistics
        (losses, ``loss`` and ``*_loss``, as the loss aggregates; every other one a mean over
        the micro-batch's counted tokens, so they average over a minibatch accordingly) and
        the policy's logprobs of its tokens [n, T], detached."""
        raise NotImplementedError

    def sampler_weights(
        self, micro: Experience, old_logprobs: torch.Tensor
    ) -> torch.Tensor | None:  # [n, T]
        """The ``sampler_correction`` weights of a micro-batch's policy-gradient terms
        (``None`` without a correction)."""
        if self.sampler_correction == "none":
            return None
        if micro.sampler_logprobs is None:
            raise ValueError(
                f"sampler_correction={self.sampler_correction!r} needs the engine's logprobs "
                "in the Experience (make_experience sets them)"
            )
        low, high = self.hparams.sampler_correction_bounds
        return sampler_correction_weights(
            old_logprobs,
            micro.sampler_logprobs,
            micro.completion_mask,
            self.sampler_correction,
            low,
            high,
        )

    # ---- the ExperienceModule contract the rollout callback drives ------------------------

    def setup(self, stage: str) -> None:
        if self.trainer.precision == "16-mixed":
            raise ValueError(
                "trainer.precision=16-mixed scales the loss with a GradScaler, which lit_rl's "
                "update (manual optimization, its own clipping) does not unscale: use "
                "precision 32-true with dtype auto/bfloat16, or FSDP2Strategy's mixed_precision"
            )
        if stage == "fit" and self.trainer.datamodule is not None:
            self.check_reward_fields(self.trainer.datamodule)
        if self.engine is None:
            self.engine = default_engine(self.trainer.strategy.root_device)
        if self.engine_session is None:
            self.engine_session = EngineSession(self.engine, self.sampling)

    def check_reward_fields(self, datamodule: LightningDataModule) -> None:
        """The dataset fields the reward reads (``lit_rl.rewards.ReadsFields``) must be in the
        training batches: checked on the first one before any model loads (setup runs before
        configure_model), not at the first rollout."""
        fields = reward_fields(self.reward)
        if not fields:
            return
        batch = next(iter(datamodule.train_dataloader()))
        missing = [field for field in fields if field not in batch]
        if missing:
            columns = sorted(key for key, value in batch.items() if isinstance(value, list))
            raise KeyError(
                f"reward '{reward_name(self.reward)}' reads the dataset field(s) {missing}, but "
                f"the training batches have {columns}: name the right column in the "
                "reward's settings (e.g. MathCorrectness answer_field), or add it to the data"
            )

    def teardown(self, stage: str) -> None:
        if self.engine_session is not None:
            self.engine_session.close()

    def on_fit_start(self) -> None:
        # Lightning keeps the modes modules were built in (it never calls train() at fit
        # start), and peft builds LoRA dropout in training mode; PolicyModels.train keeps
        # every network in eval mode (no dropout).
        self.train()

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether pi_old must be computed at rollout time. With one optimizer step per
        Experience the update is on-policy: pi_old = pi (detached), ratio = 1 exactly, and the
        extra forward pass TRL also skips is saved (unless a KL in the reward needs it)."""
        # KL(pi_old || pi_ref) in the reward needs pi_old even on-policy.
        return self.update_epochs * self.num_mini_batches > 1 or self.experience_spec().kl_coef > 0

    def experience_spec(self) -> ExperienceSpec:
        return ExperienceSpec(
            num_generations=self.num_generations,
            sampling=self.sampling,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_ids=tuple(self.eos_token_ids),
            estimator=self.advantage_estimator,
            overlong_buffer_length=self.hparams.overlong_buffer_length,
            overlong_penalty_factor=self.hparams.overlong_penalty_factor,
            mask_truncated_completions=self.hparams.mask_truncated_completions,
        )

    def score(
        self, prompts: list[str], completions: list[str], batch: dict[str, list[Any]], where: str
    ) -> RewardOutput:
        try:
            output = self.reward(prompts, completions, batch)
        except Exception as error:
            if is_input_error(error):  # lit_rl's own reward refusing its input: says it all
                raise
            # The reward's own failure: the traceback above this line shows where.
            raise RuntimeError(
                f"reward '{reward_name(self.reward)}' raised {type(error).__name__} on {where}: "
                f"{error}"
            ) from error
        return check_reward_output(output, self.reward, len(completions), where)

    @torch.no_grad()
    def score_tokens(self, sequences: Sequences) -> TokenScores:
        old = self.policy_logprobs(sequences)[0] if self.needs_old_logprobs else None
        return TokenScores(
            old_logprobs=old, ref_logprobs=self.reference_logprobs(sequences), values=None
        )

    def generate(self, request: GenerationRequest) -> Generation:
        """Completions by the run's engine, synced first when the weights changed since its
        last sync (their version is ``global_step``, the optimizer steps taken)."""
        if self.engine_session is None:
            raise RuntimeError(
                f"{type(self).__name__}.generate runs under a Trainer (its setup chooses the "
                "engine); outside one, call an engine directly"
            )
        with self.sampling_policy() as policy:
            return self.engine_session.generate(policy, request, self.global_step)

    @contextmanager
    def sampling_policy(self) -> Iterator[nn.Module]:
        """The policy with its full weights in place for an engine (gathered once under
        FSDP2, not per token)."""
        with gathered_weights(self.policy) as policy:
            yield policy

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

    # ---- log-probabilities ----------------------------------------------------------------

    def policy_logprobs(
        self, sequences: Sequences, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
        return self._built_models().policy_logprobs(
            sequences, self.sampling.temperature, self.hparams.logprob_chunk_size, with_entropy
        )

    def reference_logprobs(self, sequences: Sequences) -> torch.Tensor | None:  # [N, T]
        return self._built_models().reference_logprobs(
            sequences, self.sampling.temperature, self.hparams.logprob_chunk_size
        )

    # ---- optimisation over one Experience -------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if EXPERIENCE_KEY not in batch:
            raise RuntimeError(
                f"{type(self).__name__} trains on rollouts: add "
                "lit_rl.callbacks.RolloutCallback to trainer.callbacks"
            )
        experience: Experience | None = batch[EXPERIENCE_KEY]
        if experience is None:  # the driver is still filling a batch (dynamic sampling)
            return
        if self.hparams.activation_checkpointing:
            # Every eval() (generation's included) disarms the layers; arm them for the update.
            arm_checkpointed_layers(self.policy)
        # One unshuffled minibatch is the whole batch; shuffling would only change float order.
        generator = self.shuffle_generator if self.num_mini_batches > 1 else None
        # On-policy (one optimizer step), the first forward pass scores the sampling weights:
        # its logprobs are pi_old, kept for the rollout callback's check of the engine.
        on_policy = experience.old_logprobs is None
        trainer_logprobs: list[torch.Tensor] = []
        totals: dict[str, float] = defaultdict(float)
        num_steps = 0
        if self.loss_aggregation == "batch_token_mean":  # every process's counted tokens
            batch_tokens = max(1.0, float(all_reduce_sum(experience.loss_mask.sum())))
        for _ in range(self.update_epochs):
            for minibatch in experience.minibatches(self.num_mini_batches, generator):
                self.optimizers().zero_grad(set_to_none=True)
                loss_share, token_share = self.process_shares(minibatch)
                if self.loss_aggregation == "batch_token_mean":
                    # DAPO's token mean is over the whole batch: the minibatch's token mean
                    # times its share of the batch's tokens (x the number of minibatches, one
                    # optimizer step each) weighs every token the same in every step.
                    minibatch_tokens = float(all_reduce_sum(minibatch.loss_mask.sum()))
                    loss_share *= self.num_mini_batches * minibatch_tokens / batch_tokens
                for micro in minibatch.split(min(self.gradient_accumulation_steps, len(minibatch))):
                    weight = loss_share * micro_batch_weight(
                        micro.loss_mask, minibatch.loss_mask, self.loss_aggregation
                    )
                    token_weight = token_share * micro_batch_weight(
                        micro.loss_mask, minibatch.loss_mask, "token_mean"
                    )
                    stats, logprobs = self.accumulate_gradients(micro, weight)
                    if on_policy:
                        trainer_logprobs.append(logprobs)
                    for name, value in stats.items():
                        is_loss = name == "loss" or name.endswith("_loss")
                        totals[name] += (weight if is_loss else token_weight) * float(value)
                totals["grad_norm"] += float(self.step_optimizer())
                num_steps += 1
        # Logged once per Experience: each metric averaged over its optimizer steps, and over
        # processes weighted by their shares, which gives the global minibatch's value.
        for name, total in totals.items():
            self.log(
                f"train/{name}",
                total / num_steps,
                batch_size=len(experience),
                prog_bar=name == "kl",
                sync_dist=True,
            )
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=len(experience))
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=len(experience))
        if on_policy:  # one unshuffled minibatch, cut in order: the rows in experience order
            experience.old_logprobs = torch.cat(trainer_logprobs)
        self.on_experience_used(experience)

    def process_shares(self, minibatch: Experience) -> tuple[float, float]:
        """This process's share of the global minibatch (every process's together), times
        the number of processes: in the loss aggregation's unit (rows or tokens) and in
        counted tokens.

        DDP and FSDP average gradients over processes; weighting each process's loss by its
        share makes that average the gradient of the global minibatch's loss (a token mean
        over every process's tokens, not a mean of per-process token means). Statistics that
        are token means (KL, entropy, clip fractions) are weighted by the token share the
        same way. Both are 1.0 on one process.
        """
        world_size = self.trainer.world_size
        if world_size == 1:
            return 1.0, 1.0
        mask = minibatch.loss_mask
        counts = [aggregation_count(mask, self.loss_aggregation), int(mask.sum())]
        local = torch.tensor(counts, dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")
        shares = world_size * local / total.clamp(min=1)
        return float(shares[0]), float(shares[1])

    def on_experience_used(self, experience: Experience) -> None:
        """Called after the updates on ``experience`` (PPO adapts its KL coefficient here)."""

    def trainable_parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups; a group without ``lr`` uses ``learning_rate``."""
        return [{"params": self._built_models().policy_parameters()}]

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
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = clip_grad_norm_(params, self.hparams.max_grad_norm)
        # The norm is global (reduced over processes), so every process skips alike.
        if not torch.isfinite(grad_norm):
            self.skip_nonfinite_step(grad_norm)
            return grad_norm
        self.nonfinite_in_a_row = 0
        optimizer.step()
        self.lr_schedulers().step()
        return grad_norm

    def skip_nonfinite_step(self, grad_norm: torch.Tensor) -> None:
        """Leave weights, optimizer state and schedule as they are: an optimizer step on a
        NaN/inf gradient would poison them (and every checkpoint after it)."""
        self.optimizers().zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        limit = self.hparams.max_nonfinite_steps
        rank_zero_warn(
            f"skipped an optimizer step: the gradient norm is {float(grad_norm)} "
            f"({self.nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all; the run stops "
            f"at {limit} in a row)"
        )
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                f"{limit} optimizer steps in a row had a NaN/inf gradient (the last at "
                f"optimizer step {self.trainer.global_step}); the weights are those of the last "
                "good step and no checkpoint holds a poisoned one. Lower learning_rate, keep "
                "max_grad_norm > 0, train in float32 (dtype: float32) if bf16/fp16 overflows, "
                "or check the reward and the data for extreme values"
            )

    def optimizer_parameter_names(self) -> list[str]:
        """The names of the optimizer's parameters, in its order."""
        names = {id(p): name for name, p in self.named_parameters()}
        return [
            names[id(p)] for group in self.trainable_parameter_groups() for p in group["params"]
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["shuffle_generator"] = self.shuffle_generator.get_state()
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        # By name, so that the checkpoint resumes at another number of processes.
        names = self.optimizer_parameter_names()
        checkpoint["optimizer_states"] = [
            optimizer_state_by_name(state, names)
            for state in checkpoint.get("optimizer_states", [])
        ]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "shuffle_generator" in checkpoint:
            self.shuffle_generator.set_state(checkpoint["shuffle_generator"])
        self.nonfinite_steps = checkpoint.get("nonfinite_steps", 0)  # none counted before
        # One process (or DDP) loads by position; FSDP2 loads optimizer states itself.
        names = self.optimizer_parameter_names()
        checkpoint["optimizer_states"] = [
            optimizer_state_by_position(state, names)
            for state in checkpoint.get("optimizer_states", [])
        ]

    # ---- evaluation: the held-out split on the run's engine -------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        result = evaluate_batch(self, batch, self.evaluation, f"validation batch {batch_idx}")
        self.eval_metrics.record(result)
        # The metric objects: Lightning computes them over the whole split (every process's
        # problems) at the end of validation, and resets them.
        for name, metric in self.eval_metrics.items():
            self.log(
                f"val/{name}",
                metric,
                batch_size=len(result.greedy_correct),
                prog_bar=name == "greedy_accuracy",
            )


def check_estimator(estimator: AdvantageEstimator, num_generations: int, kl_coef: float) -> None:
    """Refuse settings under which ``estimator`` cannot work, naming the fix."""
    if estimator.needs_groups and num_generations < 2:
        raise ValueError(
            f"num_generations must be >= 2 to form groups for {type(estimator).__name__}, got "
            f"{num_generations}; sample at least two completions per prompt, or use an estimator "
            "with a critic (GAE) for G = 1"
        )
    check_reward_kl(estimator, kl_coef)


def check_reward_kl(estimator: AdvantageEstimator, kl_coef: float) -> None:
    """A KL in the reward acts through the per-token rewards: refuse an estimator that never
    reads them (process supervision), where the KL would silently do nothing."""
    if kl_coef > 0 and not estimator.uses_token_rewards:
        raise ValueError(
            f"kl_coef={kl_coef} folds a KL into the per-token rewards, which "
            f"{type(estimator).__name__} does not read: put the KL in the loss (beta) instead"
        )
