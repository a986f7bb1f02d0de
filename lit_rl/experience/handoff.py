"""ExperienceHandoff: one training batch's Experience, from the rollout driver to the update."""

from dataclasses import dataclass

import torch

from lit_rl.experience.experience import Experience


@dataclass(frozen=True)
class UpdateResult:
    """What the update over one Experience gives back (``lit_rl.update.PolicyUpdate``)."""

    metrics: dict[str, float]  # train/<name>: each averaged over the update's optimizer steps
    optimizer_steps: int
    # [N, T] pi_old as the trainer scores it: the rollout's when it computed one, else (one
    # on-policy optimizer step) the update's first forward pass, which scores the same weights.
    old_logprobs: torch.Tensor


@dataclass(frozen=True)
class TrainedBatch:
    """A training batch's Experience and the update it went into."""

    experience: Experience
    update: UpdateResult


_NOTHING = object()  # no Experience was put for this batch


class ExperienceHandoff:
    """The typed path of one batch's Experience: ``RolloutCallback`` puts it before the training
    step (``None`` while dynamic sampling is still filling a batch: no update), the module's
    ``training_step`` takes it and reports its update, and callbacks read ``trained`` at the
    batch's end. Nothing is written back into the Experience."""

    def __init__(self) -> None:
        self._pending: Experience | None | object = _NOTHING
        self.trained: TrainedBatch | None = None  # this batch's, once training_step reported it

    def put(self, experience: Experience | None) -> None:
        self._pending = experience
        self.trained = None

    def take(self) -> Experience | None:
        if self._pending is _NOTHING:
            raise RuntimeError(
                "training_step found no Experience for this batch: the module trains on "
                "rollouts, so add lit_rl.callbacks.RolloutCallback to trainer.callbacks"
            )
        experience, self._pending = self._pending, _NOTHING
        return experience  # type: ignore[return-value]

    def report(self, experience: Experience, update: UpdateResult) -> None:
        self.trained = TrainedBatch(experience, update)
