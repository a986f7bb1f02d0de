"""RolloutCallback: drives the experience pipeline before every training step."""

import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.algorithms import global_mean, global_std, sampler_mismatch
from lit_rl.experience import (
    DynamicSampling,
    Experience,
    ExperienceModule,
    ExperienceSpec,
    make_experience,
    require_members,
)
from lit_rl.rollout import LogprobCheck, ProbesSyncs
from lit_rl.state import require_keys
from lit_rl.strategies import FSDP2Strategy


class RolloutCallback(Callback):
    """Before every training step, turn the batch's prompts into an ``Experience`` with
    ``lit_rl.experience.make_experience`` (sample -> reward -> logprobs/values -> shaping ->
    advantages) and hand it to the module's ``training_step`` through its ``handoff``.

    Why a callback and not the data side: Lightning fetches the next batch before the current
    step runs, so a dataloader that generated would sample with weights one update old; a
    callback runs right before the step, with the current weights, and sees the module.

    After every step it checks the engine (the module's sampler's, synced to the weights of
    each step): the trainer's logprobs of the sampled tokens against the engine's own, logged
    as ``rollout/logprob_mismatch_k3`` (``_max``, ``_frac_over``) with the synced weights'
    version and fingerprint; ``logprob_check`` warns or stops past its thresholds.

    With ``dynamic_sampling`` (DAPO) the batch's groups whose rewards are all equal are
    dropped and the next batches' prompts are drawn until a batch of groups with signal is
    full; until then the training step is skipped (no optimizer step), and the groups kept so
    far travel in checkpoints.

    Args:
        logprob_check: thresholds of the engine check (``lit_rl.rollout.LogprobCheck``).
        dynamic_sampling: DAPO's dynamic sampling (``lit_rl.experience.DynamicSampling``);
            ``None`` trains on every batch as drawn.
    """

    def __init__(
        self,
        logprob_check: LogprobCheck | None = None,
        dynamic_sampling: DynamicSampling | None = None,
    ) -> None:
        self.logprob_check = logprob_check or LogprobCheck()
        self.dynamic_sampling = dynamic_sampling
        self.num_rollouts = 0  # batches sampled so far; in checkpoints
        self.base_seed: int | None = None  # of every rollout's RNG seed; in checkpoints
        self.low_precision = False  # the policy computes in bf16/fp16; set at fit start
        self.filling_seconds: dict[str, float] = defaultdict(float)  # phases of all draws
        self.step_started: float | None = None  # perf_counter at the step's first draw
        self.paused_log_every: int | None = None  # log_every_n_steps while a batch is not logged

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_members(pl_module, ExperienceModule, "RolloutCallback")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After configure_model: the policy exists (setup runs before it is built).
        policy = pl_module.models.policy
        self._check_context(trainer, policy, pl_module.sampler.max_rollout_tokens)
        if self.dynamic_sampling is not None and pl_module.experience_spec().num_generations < 2:
            raise ValueError(
                "dynamic sampling keeps groups whose rewards differ, and num_generations=1 "
                "gives groups of one: sample num_generations >= 2, or remove dynamic_sampling"
            )
        # The check's default thresholds follow the precision the policy computes in.
        strategy = trainer.strategy
        self.low_precision = (
            isinstance(strategy, FSDP2Strategy) and strategy.computes_in_bf16
        ) or any(p.dtype in (torch.bfloat16, torch.float16) for p in policy.parameters())

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After any checkpoint is restored (this hook runs then): a resumed run keeps the
        # base seed it started with. A fresh one draws it from the global RNG (so it follows
        # seed_everything), the same on every process.
        if self.base_seed is None:
            drawn = int(torch.randint(0, 2**62, (1,)))
            self.base_seed = int(trainer.strategy.broadcast(drawn, src=0))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # An evaluation during fit samples (pass@k) from seeds of its own step: a resumed run
        # evaluates as the uninterrupted one did, and evaluations of one step compare.
        if self.base_seed is not None and not trainer.sanity_checking:
            seed_rollout(self.base_seed, trainer.global_step, trainer.global_rank, EVALUATION)

    @staticmethod
    def _check_context(trainer: Trainer, policy: torch.nn.Module, max_new: int) -> None:
        """Prompt + completion (or episode) must fit the model's context window."""
        context = getattr(policy.config, "max_position_embeddings", None)
        max_prompt = (
            getattr(trainer.datamodule, "max_prompt_length", None) if trainer.datamodule else None
        )
        if context is None or max_prompt is None:
            return
        needed = max_prompt + max_new
        if needed > context:
            raise ValueError(
                f"max_prompt_length ({max_prompt}) + the rollout's tokens "
                f"(max_completion_length, or episodes.max_episode_tokens: {max_new}) = "
                f"{needed} exceeds the model's context of {context} tokens: lower one of them"
            )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict[str, Any], batch_idx: int
    ) -> None:
        start = time.perf_counter()
        self._resume_logging(trainer)
        if self.step_started is None:  # the step's first draw (dynamic sampling may take more)
            self.step_started = start
        spec = pl_module.experience_spec()
        seed_rollout(self.base_seed, self.num_rollouts, trainer.global_rank)
        try:
            experience, seconds = make_experience(pl_module, batch, f"training batch {batch_idx}")
        except StopIteration as error:
            # Lightning would take it for the end of the data, and start the epoch again.
            raise RuntimeError(
                f"StopIteration escaped the rollout of training batch {batch_idx} (from the "
                "reward or the engine; a next() on an empty iterator?)"
            ) from error
        self.num_rollouts += 1
        seconds["total"] = time.perf_counter() - start
        for phase, value in seconds.items():
            self.filling_seconds[phase] += value
        metrics: dict[str, torch.Tensor] = {}
        if self.dynamic_sampling is not None:
            pad_token_id = pl_module.sampler.pad_token_id
            experience, metrics = self._fill(trainer, experience, pad_token_id)
            if experience is None:
                pl_module.handoff.put(None)  # no optimizer step until the batch is full
                self._pause_logging(trainer)
                return
        pl_module.handoff.put(experience)
        metrics |= rollout_metrics(experience, spec, dict(self.filling_seconds))
        self.filling_seconds.clear()
        for name, value in metrics.items():
            # Means over processes: every process samples as many prompts and groups.
            pl_module.log(
                name,
                value,
                batch_size=len(experience),
                prog_bar=name == "rollout/reward",
                sync_dist=True,
            )

    def _pause_logging(self, trainer: Trainer) -> None:
        """Log nothing for a batch without an optimizer step: Lightning would log the last
        step's values again (its result collection keeps them until the epoch ends), so the
        metrics would show repeats. ``log_every_n_steps = 0`` is Lightning's own switch for
        "no step logging"; the next batch restores the user's value."""
        if self.paused_log_every is None:
            self.paused_log_every = trainer.log_every_n_steps
            trainer.log_every_n_steps = 0

    def _resume_logging(self, trainer: Trainer) -> None:
        if self.paused_log_every is not None:
            trainer.log_every_n_steps = self.paused_log_every
            self.paused_log_every = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resume_logging(trainer)

    def _fill(
        self, trainer: Trainer, experience: Experience, pad_token_id: int
    ) -> tuple[Experience | None, dict[str, torch.Tensor]]:
        """Offer the draw to the dynamic-sampling buffer; the full batch when every process's
        is full (they step together) or at the cap on draws, else ``None``."""
        sampling = self.dynamic_sampling
        target = experience.num_groups  # the batch's prompts
        sampling.offer(experience)
        full = torch.tensor(float(sampling.kept_groups >= target), device=experience.rewards.device)
        if trainer.world_size > 1:
            full = trainer.strategy.reduce(full, reduce_op="min")
        if not (bool(full) or sampling.at_cap):
            return None, {}
        drawn, dropped, draws = sampling.drawn_groups, sampling.dropped_groups, sampling.draws
        experience, filled = sampling.take(experience, target, pad_token_id)
        metrics = {
            "rollout/draws": draws,
            "rollout/prompts_drawn": drawn,
            "rollout/groups_dropped": dropped,
            "rollout/drawn_zero_std_fraction": dropped / drawn,
            "rollout/groups_filled": filled,
        }
        return experience, {name: torch.tensor(float(v)) for name, v in metrics.items()}

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        trained = pl_module.handoff.trained
        if trained is None:  # no update on this batch (dynamic sampling is filling one)
            return
        experience = trained.experience
        if self.step_started is not None:
            # Rollouts and update of this optimizer step, on the progress bar.
            seconds = time.perf_counter() - self.step_started
            pl_module.log("train/step_time", seconds, batch_size=len(experience), prog_bar=True)
            self.step_started = None
        engine = pl_module.sampler.engine
        if isinstance(engine, ProbesSyncs):  # its own check of the last sync
            pl_module.log(
                "rollout/sync_probe_gap", engine.last_probe_gap, batch_size=len(experience)
            )
        if experience.sampler_logprobs is None:
            return
        # pi_old as the trainer scored it: from the rollout, or (on-policy) from the update's
        # first forward pass.
        check = self.logprob_check
        mismatch = sampler_mismatch(
            trained.update.old_logprobs,
            experience.sampler_logprobs,
            experience.completion_mask,
            check.token_threshold,
            across_processes=True,
        )
        for name, value in mismatch.items():
            pl_module.log(
                f"rollout/logprob_mismatch_{name}", value.float(), batch_size=len(experience)
            )
        check.verify(
            mismatch["k3"],
            float(mismatch["max_abs"]),
            engine.name,
            experience.weights_version,
            self.low_precision,
        )

    def state_dict(self) -> dict[str, Any]:
        # Every rollout's seed follows from these two (and the rank): a resumed run draws the
        # same rollouts as an uninterrupted one, on any device and number of processes.
        state = {"num_rollouts": self.num_rollouts, "base_seed": self.base_seed}
        if self.dynamic_sampling is not None:  # the groups kept so far: experience in flight
            state["dynamic_sampling"] = self.dynamic_sampling.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        require_keys(state_dict, ["num_rollouts", "base_seed"], "RolloutCallback")
        self.num_rollouts = state_dict["num_rollouts"]
        self.base_seed = state_dict["base_seed"]
        # A run that turns dynamic sampling on at a resume starts with an empty buffer.
        if self.dynamic_sampling is not None and "dynamic_sampling" in state_dict:
            self.dynamic_sampling.load_state_dict(state_dict["dynamic_sampling"])


TRAINING, EVALUATION = 0, 1  # the two streams of seeds: rollouts, and evaluations


def seed_rollout(base_seed: int, index: int, rank: int, stream: int = TRAINING) -> None:
    """Seed every RNG a rollout may draw from (torch on the CPU and every CUDA device, numpy,
    Python) from the run's base seed, the stream (training rollouts or evaluations), the
    rollout's index (an evaluation's: the optimizer step) and the process's rank.

    Why per rollout and not one RNG state carried along: a rollout's randomness is then a
    function of what the checkpoint holds (the base seed and the rollout count), however
    many random numbers anything else drew before it (evaluation, a reward, a resumed run's
    start-up); each process samples its own prompts with its own stream.
    """
    entropy = [base_seed, stream, index, rank]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rollout_metrics(
    experience: Experience, spec: ExperienceSpec, seconds: dict[str, float]
) -> dict[str, torch.Tensor]:
    """The ``rollout/*`` metrics of one Experience (docs/algorithms/grpo.md, ppo.md):
    ``reward`` is the rewards' mean (the reward's total, with DAPO's overlong penalty when
    on), ``return`` each completion's return (its reward minus the KL in the reward, when the
    algorithm folds one in) averaged; ``completion_len`` counts the sampled tokens (an
    episode's environment tokens are ``episode/environment_tokens``)."""
    rewards, mask, truncated = experience.rewards, experience.completion_mask, experience.truncated
    if truncated is None:
        raise ValueError("rollout_metrics needs the Experience's truncated flags (make_experience)")
    metrics = {
        "rollout/reward": rewards.mean(),
        "rollout/return": experience.token_rewards.sum(dim=1).mean(),
        "rollout/completion_len": mask.sum(1).float().mean(),
        "rollout/truncated_fraction": truncated.float().mean(),
        "rollout/advantage_std": global_std(experience.advantages[mask]),
        **{f"rollout/reward/{k}": v.mean() for k, v in experience.reward_components.items()},
        **{f"rollout/episode/{k}": v.mean() for k, v in experience.episode_stats.items()},
        **{f"rollout/{phase}_time": torch.tensor(s) for phase, s in seconds.items()},
        "rollout/weights_version": torch.tensor(experience.weights_version),
        "rollout/weights_fingerprint": torch.tensor(experience.weights_fingerprint),
    }
    if spec.num_generations > 1:  # within-group statistics (G = 1 has no groups)
        group_std = rewards.view(-1, spec.num_generations).std(dim=1)
        metrics["rollout/reward_std"] = group_std.mean()
        metrics["rollout/zero_std_fraction"] = (group_std == 0).float().mean()
    if experience.kl is not None:
        metrics["rollout/kl"] = (experience.kl * mask).sum(dim=1).mean()
        metrics["rollout/kl_coef"] = torch.tensor(spec.kl_coef)
    if experience.values is not None:
        metrics["rollout/values"] = global_mean(experience.values[mask])
    return {name: value.float() for name, value in metrics.items()}
