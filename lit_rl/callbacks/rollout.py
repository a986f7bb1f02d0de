"""RolloutCallback: drives the experience pipeline before every training step."""

import time
from collections import defaultdict
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.algorithms import sampler_mismatch
from lit_rl.callbacks.ahead import RolloutsAhead
from lit_rl.callbacks.rollout_metrics import rollout_metrics
from lit_rl.callbacks.seeding import EVALUATION, seed_rollout
from lit_rl.experience import (
    DynamicSampling,
    Experience,
    ExperienceModule,
    make_experience,
    require_members,
)
from lit_rl.rollout import Completions, LogprobCheck, ProbesSyncs, SamplesAhead
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

    With ``max_staleness`` S > 0 the rollouts run ahead (``RolloutsAhead``): each step submits
    its batch to a worker that samples it while the trainer updates on the previous batch's
    rollouts, sampled one rollout before (the first step only submits: no optimizer step).
    The engine samples from weights of its own (``SamplesAhead``: PackedEngine and
    HFGenerateEngine from a copy taken at each sync, VLLMServerEngine on its servers). What
    is trained on must be at most S weights versions (optimizer steps) behind, checked
    at consumption and logged as ``rollout/staleness``. pi_old is the trainer's, at the
    weights of the update; the gap to the sampler's logprobs (the drift of the updates in
    between, and the engine's own) is weighed by ``sampler_correction``. A checkpoint keeps the
    batch in flight, which a resumed run samples again: no prompt is lost or trained twice.

    Args:
        logprob_check: thresholds of the engine check (``lit_rl.rollout.LogprobCheck``).
        dynamic_sampling: DAPO's dynamic sampling (``lit_rl.experience.DynamicSampling``);
            ``None`` trains on every batch as drawn.
        max_staleness: how many weights versions behind the trained-on rollouts may be; 0 =
            sampled right before the update (synchronous, bit for bit as always).
    """

    def __init__(
        self,
        logprob_check: LogprobCheck | None = None,
        dynamic_sampling: DynamicSampling | None = None,
        max_staleness: int = 0,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if max_staleness > 0 and dynamic_sampling is not None:
            raise ValueError(
                "dynamic sampling with rollouts ahead (max_staleness > 0) is not supported: "
                "remove one of them"
            )
        self.logprob_check = logprob_check or LogprobCheck()
        self.dynamic_sampling = dynamic_sampling
        self.max_staleness = max_staleness
        self.ahead: RolloutsAhead | None = None  # the worker, while fitting with S > 0
        self.requeued: dict[str, Any] | None = None  # a checkpoint's batch in flight
        self.staleness = 0  # versions between the sampling and the update of this step
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
        if self.max_staleness > 0:
            engine = pl_module.sampler.engine
            if not isinstance(engine, SamplesAhead):
                raise ValueError(
                    f"max_staleness={self.max_staleness} samples while the update changes the "
                    f"policy, and {engine.name} cannot (it has no sample_ahead: VLLMEngine "
                    "shares the accelerator's memory with the update by sleeping through it): "
                    "use PackedEngine, HFGenerateEngine or VLLMServerEngine, or max_staleness: 0"
                )
            engine.sample_ahead()
            self.ahead = RolloutsAhead()
        # The check's default thresholds follow the precision the policy computes in.
        strategy = trainer.strategy
        self.low_precision = (
            isinstance(strategy, FSDP2Strategy) and strategy.computes_in_bf16
        ) or any(p.dtype in (torch.bfloat16, torch.float16) for p in policy.parameters())

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After any checkpoint is restored (this hook runs then): a resumed run keeps the
        # base seed it started with. A fresh one draws it from the global RNG (so it follows
        # seed_everything), the same on every process.
        if self.requeued is not None and self.ahead is None:
            raise ValueError(
                "this checkpoint holds a batch of prompts drawn for rollouts ahead "
                "(max_staleness > 0) and not yet trained on: resume it with max_staleness >= 1, "
                "or its prompts would be lost"
            )
        if self.base_seed is None:
            drawn = int(torch.randint(0, 2**62, (1,)))
            self.base_seed = int(trainer.strategy.broadcast(drawn, src=0))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.ahead is not None:  # the evaluation syncs the engine to newer weights
            self.ahead.wait()
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
        try:
            made = self._experience(trainer, pl_module, batch, f"training batch {batch_idx}")
        except StopIteration as error:
            # Lightning would take it for the end of the data, and start the epoch again.
            raise RuntimeError(
                f"StopIteration escaped the rollout of training batch {batch_idx} (from the "
                "reward or the engine; a next() on an empty iterator?)"
            ) from error
        if made is None:  # rollouts ahead: the first batch is in flight, nothing to train on
            pl_module.handoff.put(None)
            self._pause_logging(trainer)
            return
        experience, seconds = made
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
        # Weights versions (optimizer steps) between the sampling and this update.
        self.staleness = pl_module.global_step - experience.weights_version
        metrics["rollout/staleness"] = torch.tensor(float(self.staleness))
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

    def _experience(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict[str, Any], where: str
    ) -> tuple[Experience, dict[str, float]] | None:
        """This step's Experience: of ``batch`` sampled now, or (rollouts ahead) of the batch
        sampled during the last update, while ``batch`` is submitted in its turn."""
        rank = trainer.global_rank
        if self.ahead is None:
            seed_rollout(self.base_seed, self.num_rollouts, rank)
            self.num_rollouts += 1
            return make_experience(pl_module, batch, where)
        version, spec = pl_module.global_step, pl_module.experience_spec()
        sampler, ahead = pl_module.sampler, self.ahead
        if self.requeued is not None:  # a checkpoint's batch in flight: sampled again, now
            batch_then, index = self.requeued["batch"], self.requeued["index"]
            self.requeued = None
            seed_rollout(self.base_seed, index, rank)
            start = time.perf_counter()
            sampled = sampler.rollouts(batch_then, spec.num_generations, version)
            ready = (batch_then, sampled, time.perf_counter() - start)
        else:
            taken = ahead.take()  # before the sync below: its requests name their version
            ready = None if taken is None else (taken[0].batch, taken[1], taken[2])
        sampler.sync(version)
        index, base_seed = self.num_rollouts, self.base_seed

        def sample() -> Completions:
            seed_rollout(base_seed, index, rank)
            return sampler.rollouts(batch, spec.num_generations, version)

        ahead.submit(batch, index, version, sample)
        self.num_rollouts += 1
        if ready is None:
            return None
        batch_then, sampled, waited = ready
        staleness = version - sampled.weights_version
        if staleness > self.max_staleness:
            raise RuntimeError(
                f"rollouts sampled with weights version {sampled.weights_version} reached the "
                f"update at version {version}: {staleness} behind, past max_staleness="
                f"{self.max_staleness}. Each rollout takes {staleness} optimizer steps "
                "(ppo_epochs x num_mini_batches): set max_staleness to at least that"
            )
        experience, seconds = make_experience(pl_module, batch_then, where, sampled=sampled)
        return experience, seconds | {"generation": waited}

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
        self._stop_ahead()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._stop_ahead()  # before the engine closes beneath the worker

    def _stop_ahead(self) -> None:
        if self.ahead is not None:
            flight = self.ahead.close()
            if flight is not None:  # a checkpoint written later still holds its prompts
                self.requeued = {"batch": flight.batch, "index": flight.index}
            self.ahead = None

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
        if self.staleness > 0:
            # Sampled ahead, with weights older than the ones scoring pi_old: the gap is the
            # update's drift as well as the engine's, so it is logged, not judged (each sync
            # is checked still: the fingerprint of the copy, the servers' probe).
            return
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
        flight = self.ahead.in_flight if self.ahead is not None else None
        if flight is not None:  # prompts drawn from the data, not yet trained on
            state["in_flight"] = {"batch": flight.batch, "index": flight.index}
        elif self.requeued is not None:
            state["in_flight"] = self.requeued
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        require_keys(state_dict, ["num_rollouts", "base_seed"], "RolloutCallback")
        self.num_rollouts = state_dict["num_rollouts"]
        self.base_seed = state_dict["base_seed"]
        self.requeued = state_dict.get("in_flight")  # sampled again at the first step
        # A run that turns dynamic sampling on at a resume starts with an empty buffer.
        if self.dynamic_sampling is not None and "dynamic_sampling" in state_dict:
            self.dynamic_sampling.load_state_dict(state_dict["dynamic_sampling"])
