"""What the reliability tests add to a CLI run by ``class_path``: a recorder of each step's
logged scalars and final weights (and of each process's), ways for a process to die or be
stopped at a chosen moment (SIGKILL after a step or halfway through a checkpoint write,
SIGTERM/SIGINT), a module whose loss turns NaN on one process, and broken rewards."""

import dataclasses
import io
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.modules import GRPOModule
from lit_rl.rewards import RewardOutput


class StepRecorder(Callback):
    """Appends each optimizer step's logged ``train/*`` and ``rollout/*`` scalars (timings
    left out), and each evaluation's ``val/*``, to ``path`` as JSON lines, and writes the
    module's state dict to ``<path>.weights.pt`` when training ends. A resumed run appends to
    the same file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.handoff.trained is None:  # no update on this batch
            return
        row: dict[str, float] = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith(("train/", "rollout/")) and not name.endswith("_time"):
                row[name] = float(value)
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")  # repr of each float: read back bit for bit

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        row: dict[str, float] = {"validation_at": trainer.global_step}
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith("val/"):
                row[name] = float(value)
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {name: tensor.detach().clone() for name, tensor in pl_module.state_dict().items()}
        torch.save(state, self.path.with_suffix(".weights.pt"))


class KillAfterStep(Callback):
    """SIGKILLs its own process at the first batch that starts at optimizer step ``step`` or
    later: listed after ``RolloutCallback``, once that batch's rollout is done (experience in
    flight is lost, as in a real kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAfterStep(Callback):
    """Sends ``signum`` to its own process at the first batch that starts at optimizer step
    ``step`` or later, as a scheduler's preemption (SIGTERM) or Ctrl+C (SIGINT) would; with
    ``rank``, only that process is signalled."""

    def __init__(
        self, step: int, signum: int = int(signal.SIGTERM), rank: int | None = None
    ) -> None:
        self.step = step
        self.signum = signum
        self.rank = rank
        self.sent = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class KillDuringCheckpointWrite(Callback):
    """SIGKILLs its own process halfway through writing the ``nth`` checkpoint file (counting
    every file written, interval and last alike): the bytes of half a checkpoint are on disk
    when the process dies, as when a node fails during a save."""

    def __init__(self, nth: int) -> None:
        self.nth = nth

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        save, count = torch.save, [0]

        def half_then_kill(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            count[0] += isinstance(file, io.IOBase) and not isinstance(file, io.BytesIO)
            if count[0] < self.nth or isinstance(file, io.BytesIO):
                save(obj, file, *args, **kwargs)
                return
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_kill


class RaisingReward:
    """A user's reward with a bug: it divides by zero."""

    name = "raising"

    def __call__(self, prompts: list[str], completions: list[str], batch: dict) -> RewardOutput:
        return RewardOutput(total=torch.tensor([1.0 / 0 for _ in completions]))


class ListTotalReward:
    """A user's reward that returns a list where a tensor belongs."""

    name = "list_total"

    def __call__(self, prompts: list[str], completions: list[str], batch: dict) -> RewardOutput:
        return RewardOutput(total=[0.0] * len(completions))  # type: ignore[arg-type]


class ProcessState(Callback):
    """Writes each process's trainable weights, optimizer step and skipped-step count to
    ``<path>.rank<r>.pt`` when training ends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {
            "global_step": trainer.global_step,
            "nonfinite_steps": pl_module.policy_update.guard.nonfinite_steps,
            "weights": {
                name: p.detach().clone()
                for name, p in pl_module.named_parameters()
                if p.requires_grad
            },
        }
        torch.save(state, f"{self.path}.rank{trainer.global_rank}.pt")


class NaNLossGRPO(GRPOModule):
    """GRPO whose loss is NaN on process ``nan_rank`` at the optimizer-step attempts
    ``nan_attempts`` (0, 1, ...; skipped attempts count), as a batch with a NaN would make it."""

    def __init__(
        self, *args: Any, nan_attempts: list[int], nan_rank: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.nan_attempts = nan_attempts
        self.nan_rank = nan_rank

    def accumulate_gradients(self, micro: Any, weight: float) -> Any:  # noqa: ANN401
        attempt = self.global_step + self.policy_update.guard.nonfinite_steps
        if attempt in self.nan_attempts and self.trainer.global_rank == self.nan_rank:
            micro = dataclasses.replace(micro, advantages=micro.advantages * math.nan)
        return super().accumulate_gradients(micro, weight)


class PromptRecorder(Callback):
    """Appends the prompts each optimizer step trained on (one per group) to ``path`` as JSON
    lines; a resumed run appends to the same file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        trained = pl_module.handoff.trained
        if trained is None:  # no update on this batch
            return
        experience = trained.experience
        row = {"step": trainer.global_step, "prompts": experience.prompts[:: experience.group_size]}
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")
