"""A training DataLoader that resumes where it stopped: the position inside the epoch is in
every checkpoint (Lightning saves the state of a loader that has ``state_dict``), so a resumed
run continues with the next unseen prompt instead of replaying the epoch from its start."""

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from lit_rl.state import require_keys


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (each epoch's order a function of ``seed + epoch``, each process
    its own slice) that counts the indices it has handed out and can start an epoch part-way.

    Being a ``DistributedSampler``, Lightning keeps it under DDP/FSDP instead of replacing it.
    Exact only when indices are drawn as batches are used: a DataLoader without worker
    processes (prompts are a list in memory; nothing to prefetch).
    """

    def __init__(self, num_rows: int, seed: int, rank: int = 0, num_replicas: int = 1) -> None:
        super().__init__(
            range(num_rows), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
        )
        self.start = 0  # indices of this epoch already used (a resumed epoch skips them)
        self.yielded = 0  # indices handed out in this epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts at its beginning
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is computed at the first draw, after Lightning's set_epoch.
        indices = list(super().__iter__())
        self.yielded = self.start
        for index in indices[self.start :]:
            self.yielded += 1
            yield index
        self.start = 0  # the epoch is complete; the next one starts at its beginning

    def state_dict(self) -> dict[str, int]:
        # Counted over all processes: process r reads order[r::num_replicas], so the prompts
        # used so far are the order's first `consumed`, whatever the number of processes.
        consumed = self.yielded * self.num_replicas
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        require_keys(state, ["epoch", "consumed", "seed"], "ResumableSampler")
        if state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's data order was shuffled with seed {state['seed']}, this run's "
                f"with {self.seed}: resume with the data seed that wrote it"
            )
        self.epoch = state["epoch"]
        # At another number of processes, a remainder of consumed prompts is read again.
        self.start = self.yielded = state["consumed"] // self.num_replicas


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` whose state Lightning checkpoints."""

    sampler: ResumableSampler

    def __init__(self, dataset: Any, sampler: ResumableSampler, **kwargs: Any) -> None:  # noqa: ANN401
        if kwargs.get("num_workers", 0) != 0:
            raise ValueError(
                "ResumableDataLoader counts prompts as batches are used: worker processes "
                "would fetch ahead of training, so it takes num_workers=0"
            )
        super().__init__(dataset, sampler=sampler, **kwargs)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
