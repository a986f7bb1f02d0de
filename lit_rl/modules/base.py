"""PolicyModule: what every RL LightningModule shares: its hyper-parameters, the models built in
``configure_model``, the optimizer, a ``training_step`` that trains on the Experience the rollout
driver hands over, and validation. An algorithm subclasses it with its estimator and its loss.

The parts live behind typed seams: the networks in ``lit_rl.models.PolicyModels``, sampling in
``lit_rl.rollout.CompletionSampler``, the update loop and the guarded optimizer step in
``lit_rl.update``, the handoff and the contract the callbacks rely on in ``lit_rl.experience``.
"""

from typing import Any

import torch
from lightning.pytorch import LightningModule
from peft import LoraConfig
from torch import nn

from lit_rl.algorithms import KLEstimator, SamplerCorrection
from lit_rl.environments import Episodes
from lit_rl.evaluation import EvaluationMetrics, EvaluationPlan, evaluate_batch
from lit_rl.experience import (
    AdvantageEstimator,
    Experience,
    ExperienceHandoff,
    ExperienceSpec,
    LogprobsAndValues,
    Overlong,
    PromptBatch,
)
from lit_rl.models import (
    DType,
    ModelRecipe,
    PolicyModels,
    Sequences,
    arm_checkpointed_layers,
    load_tokenizer,
)
from lit_rl.rewards import RewardFn, check_reward_fields, reward_fields
from lit_rl.rollout import (
    CompletionSampler,
    EpisodeSampler,
    RolloutEngine,
    SamplingParams,
    default_engine,
)
from lit_rl.state import plain, require_keys
from lit_rl.strategies import (
    build_policy_models,
    gathered_weights,
    name_optimizer_states,
    number_optimizer_states,
    parameter_names,
)
from lit_rl.update import (
    AdamWWithWarmup,
    GuardedOptimizerStep,
    MicroBatchLoss,
    PolicyUpdate,
    UpdatePlan,
    refuse_loss_scaling,
)


def check_overlong_budget(
    overlong: Overlong | None, max_completion_length: int, episodes: Episodes | None
) -> None:
    """DAPO's overlong buffer must fit the length budget it is measured against."""
    budget = max_completion_length if episodes is None else episodes.max_episode_tokens
    if overlong is not None and overlong.buffer_length > budget:
        raise ValueError(
            f"overlong.buffer_length ({overlong.buffer_length}) must be <= the length "
            f"budget (max_completion_length, or episodes.max_episode_tokens: {budget})"
        )


class PolicyModule(LightningModule):
    """The policy (optionally LoRA), its reference and the reward, behind the
    ``lit_rl.experience.ExperienceModule`` contract that ``RolloutCallback`` drives. Manual
    optimisation: one Experience feeds ``policy_update.plan.optimizer_steps`` optimizer steps
    (``trainer.global_step`` counts them). The models are built in ``configure_model`` (call it
    yourself to use a module alone); on several processes each trains on its own prompts and
    every quantity defined over the batch is reduced across them.

    Args:
        reward: ``reward(prompts, completions, batch) -> RewardOutput``, any callable by
            ``class_path`` (``lit_rl.rewards``).
        model: ``embedded`` (SmolLM2-135M-Instruct), a local HF directory, or a hub id.
        lora: a peft ``LoraConfig``; ``None`` = full fine-tuning with a frozen reference copy.
        dtype: ``auto`` = ``bfloat16`` where it is fast and LoRA freezes the weights, else
            ``float32`` (logged with its reason); adapters and logprobs are always float32.
        num_generations: G, completions per prompt (>= 2 where the estimator compares them).
        max_completion_length: T, new tokens per completion at most.
        temperature: of sampling; logprobs are of the tempered distribution.
        top_p: nucleus sampling; 1.0 samples the full distribution.
        stop_strings: strings that end a completion (an episode's turn) as its EOS does: at the
            token that completes one, kept whole as sampled (``lit_rl.rollout.StopStrings``;
            e.g. a tool call's closing tag).
        learning_rate: AdamW's (``AdamWWithWarmup``).
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        max_grad_norm: clipping by global norm (``GuardedOptimizerStep``); 0 = none.
        num_mini_batches: optimizer steps per pass over an Experience (``UpdatePlan``).
        gradient_accumulation_steps: micro-batches per minibatch (2 halve a CPU step's peak
            memory for ~5% of its update time: docs/benchmarks.md).
        activation_checkpointing: recompute layers' activations in the backward pass.
        logprob_chunk_size: rows of float32 logits materialised at a time.
        engine: the run's one rollout engine (``lit_rl.rollout``); ``None``: ``default_engine``.
        evaluation: how validation scores the held-out split (``EvaluationPlan``).
        sampler_correction: reweighting for the engine-trainer gap (``SamplerCorrection``).
        overlong: DAPO's overlong punishment and filtering (``lit_rl.experience.Overlong``).
        episodes: multi-turn rollouts against an environment (``lit_rl.environments.Episodes``);
            ``None``: one completion per rollout.
        max_nonfinite_steps: NaN/inf optimizer steps in a row (each skipped) that stop the run.
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
        stop_strings: list[str] | None = None,
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
        sampler_correction: SamplerCorrection | None = None,
        overlong: Overlong | None = None,
        episodes: Episodes | None = None,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        check_overlong_budget(overlong, max_completion_length, episodes)
        self.sampling = SamplingParams(
            max_completion_length, temperature, top_p, stop=tuple(stop_strings or ())
        )
        # Objects enter the checkpoint's hyperparameters as plain values (it loads with
        # weights_only), or not at all.
        settings = {"lora": lora, "sampler_correction": sampler_correction, "overlong": overlong}
        ignore = ["reward", "advantage_estimator", "engine", "evaluation", "episodes", *settings]
        self.save_hyperparameters(ignore=ignore)
        self.hparams.update({name: plain(value) for name, value in settings.items()})
        self.episodes = episodes  # its environment is a class to call, not a plain value
        self.automatic_optimization = False
        self.reward = reward
        self.tokenizer = load_tokenizer(model)
        self.model_recipe = ModelRecipe(model, lora, dtype, activation_checkpointing)
        self.models: PolicyModels | None = None  # built in configure_model
        self.engine = engine  # None: default_engine of the device, chosen in setup
        self._sampler: CompletionSampler | None = None
        self.num_generations = num_generations
        self.policy_update = PolicyUpdate(
            UpdatePlan(1, num_mini_batches, gradient_accumulation_steps, "token_mean"),
            GuardedOptimizerStep(max_grad_norm, max_nonfinite_steps),
        )
        self.optimizer_settings = AdamWWithWarmup(learning_rate, weight_decay, warmup_steps)
        self.logprob_chunk_size = logprob_chunk_size
        self.evaluation = evaluation or EvaluationPlan()
        self.eval_metrics = EvaluationMetrics(self.evaluation.num_samples)
        self.sampler_correction = sampler_correction or SamplerCorrection()
        self.overlong = overlong or Overlong()
        self.handoff = ExperienceHandoff()

    # ---- what an algorithm sets in its __init__, and its loss -----------------------------

    advantage_estimator: AdvantageEstimator
    # self.policy_update.plan: its epochs (GRPO's mu, PPO's ppo_epochs) and loss aggregation
    kl_coef: float  # weight of the KL(pi_old || pi_ref) folded into the reward; 0 = none
    kl_estimator: KLEstimator  # that KL per token

    def accumulate_gradients(self, micro: Experience, weight: float) -> MicroBatchLoss:
        """Backward ``weight`` x the loss of one micro-batch (``lit_rl.update.Accumulate``)."""
        raise NotImplementedError

    # ---- the models -------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the models (once), sharded when the strategy is FSDP2."""
        if self.models is None:
            # device_mesh is set by ModelParallelStrategy (and so FSDP2Strategy) alone.
            strategy = self.trainer.strategy if self.device_mesh is not None else None
            self.models = build_policy_models(self.model_recipe, strategy)

    def _built_models(self) -> PolicyModels:
        if self.models is None:
            raise RuntimeError(
                f"{type(self).__name__}'s models are built in configure_model, which the "
                "Trainer calls at fit/validate; call module.configure_model() to use it alone"
            )
        return self.models

    @property
    def policy(self) -> nn.Module:
        """The policy network (``PeftModel`` under LoRA)."""
        return self._built_models().policy

    @property
    def sampler(self) -> CompletionSampler:
        """The policy's sampler on the run's engine, made at its first use."""
        if self._sampler is None:
            models = self._built_models()
            eos = tuple(models.eos_token_ids(self.tokenizer.eos_token_id))
            engine = self.engine or default_engine(self.device)
            policy, sampling = models.policy, self.sampling
            if self.episodes is None:
                self._sampler = CompletionSampler(
                    engine, policy, self.tokenizer, eos, sampling, gathered_weights
                )
            else:
                self._sampler = EpisodeSampler(
                    engine, policy, self.tokenizer, eos, sampling, self.episodes, gathered_weights
                )
        return self._sampler

    def policy_logprobs(
        self, sequences: Sequences, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
        return self._built_models().policy_logprobs(
            sequences, self.sampling.temperature, self.logprob_chunk_size, with_entropy
        )

    # ---- the ExperienceModule contract the rollout callback drives ------------------------

    def experience_spec(self) -> ExperienceSpec:
        algorithm = (
            self.num_generations,
            self.advantage_estimator,
            self.kl_coef,
            self.kl_estimator,
        )
        return ExperienceSpec(*algorithm, overlong=self.overlong)

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether pi_old is computed at rollout time. With one optimizer step per Experience
        the update is on-policy (pi_old = pi detached, ratio 1), and the extra forward pass
        TRL also skips is saved, unless a KL(pi_old || pi_ref) in the reward needs it."""
        return self.policy_update.plan.optimizer_steps > 1 or self.kl_coef > 0

    @torch.no_grad()
    def logprobs_and_values(self, sequences: Sequences) -> LogprobsAndValues:
        models = self._built_models()
        temperature, chunk = self.sampling.temperature, self.logprob_chunk_size
        return LogprobsAndValues(
            old_logprobs=self.policy_logprobs(sequences)[0] if self.needs_old_logprobs else None,
            ref_logprobs=models.reference_logprobs(sequences, temperature, chunk),
            values=models.values(sequences) if models.has_critic else None,
        )

    # ---- the run ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        refuse_loss_scaling(self.trainer.precision)
        # On the first batch, before any model loads (setup runs before configure_model).
        datamodule = self.trainer.datamodule
        if stage == "fit" and datamodule is not None and reward_fields(self.reward):
            check_reward_fields(self.reward, next(iter(datamodule.train_dataloader())))
        if self.engine is None:
            self.engine = default_engine(self.trainer.strategy.root_device)

    def on_fit_start(self) -> None:
        # Lightning never calls train() at fit start and peft builds LoRA dropout in training
        # mode; PolicyModels.train keeps every network in eval mode (no dropout).
        self.train()

    def teardown(self, stage: str) -> None:
        if self._sampler is not None:  # a sample sets the engine up again (fit, then validate)
            self._sampler.close()

    # ---- optimisation over one Experience -------------------------------------------------

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Train on the Experience ``RolloutCallback`` made of ``batch``."""
        experience = self.handoff.take()
        if experience is None:  # the driver is still filling a batch (dynamic sampling)
            return
        if self.model_recipe.activation_checkpointing:
            # Every eval() (generation's included) disarms the layers; arm them for the update.
            arm_checkpointed_layers(self.policy)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        update = self.policy_update(experience, self.accumulate_gradients, optimizer, scheduler)
        # Once per Experience; weighted by shares, the processes' mean is the global value.
        rows = len(experience)
        for name, value in update.metrics.items():
            self.log(f"train/{name}", value, batch_size=rows, prog_bar=name == "kl", sync_dist=True)
        self.log("train/lr", scheduler.get_last_lr()[0], batch_size=rows)
        skipped = self.policy_update.guard.nonfinite_steps
        self.log("train/nonfinite_steps", float(skipped), batch_size=rows)
        self.after_update(experience)
        self.handoff.report(experience, update)

    def after_update(self, experience: Experience) -> None:
        """Called after the optimizer steps on ``experience`` (PPO adapts its KL coefficient)."""

    def trainable_parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups; a group without ``lr`` uses ``learning_rate``."""
        return [{"params": self._built_models().policy_parameters()}]

    def configure_optimizers(self) -> dict[str, Any]:
        return self.optimizer_settings.configure(self.trainable_parameter_groups())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["policy_update"] = self.policy_update.state_dict()
        # By name, so that the checkpoint resumes at another number of processes.
        name_optimizer_states(checkpoint, parameter_names(self, self.trainable_parameter_groups()))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_keys(checkpoint, ["policy_update"], type(self).__name__)
        self.policy_update.load_state_dict(checkpoint["policy_update"])
        number_optimizer_states(
            checkpoint, parameter_names(self, self.trainable_parameter_groups())
        )

    # ---- evaluation: the held-out split on the run's engine -------------------------------

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        where = f"validation batch {batch_idx}"
        result = evaluate_batch(
            self.sampler, self.reward, batch, self.evaluation, self.global_step, where
        )
        self.eval_metrics.record(result)
        # The metric objects: Lightning computes them over the whole split (every process's
        # problems) at the end of validation, and resets them.
        rows = len(result.greedy_correct)
        for name, metric in self.eval_metrics.items():
            self.log(f"val/{name}", metric, batch_size=rows, prog_bar=name == "greedy_accuracy")
