"""RolloutsAhead: the next batch's rollouts sampled while the trainer updates on this one.

One worker thread samples one batch at a time (``submit``); the trainer takes the result at
its next step (``take``), so what it trains on was sampled with the weights of one rollout
before (``max_staleness`` bounds it; ``RolloutCallback`` checks it at consumption). Only the
sampling runs in the worker: the engine's sync, the reward, the trainer's logprobs and the
update stay on the training thread, and the engine samples from weights of its own
(``SamplesAhead``: a copy taken at the sync, or a server's), so nothing reads the policy while
the update changes it. An exception of the worker reaches the trainer at ``take``.
"""

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lit_rl.rollout import Completions

PromptBatch = dict[str, Any]


@dataclass
class InFlight:
    """A batch being sampled: its prompts, its rollout index (its seeds) and weights version."""

    batch: PromptBatch
    index: int
    version: int
    future: Future


class RolloutsAhead:
    """At most one batch in flight, sampled on a worker thread."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_rl-rollouts")
        self.in_flight: InFlight | None = None

    def submit(
        self, batch: PromptBatch, index: int, version: int, sample: Callable[[], Completions]
    ) -> None:
        if self.in_flight is not None:
            raise RuntimeError("RolloutsAhead: a batch is in flight already; take it first")
        self.in_flight = InFlight(batch, index, version, self.executor.submit(sample))

    def take(self) -> tuple[InFlight, Completions, float] | None:
        """The batch in flight, its rollouts and the seconds the trainer waited for them
        (``None`` when none is in flight); the worker's exception, if it raised."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return None
        start = time.perf_counter()
        sampled = flight.future.result()
        return flight, sampled, time.perf_counter() - start

    def wait(self) -> None:
        """Until the batch in flight is sampled (it stays to be taken): before anything else
        uses the engine (an evaluation syncs it to newer weights)."""
        if self.in_flight is not None:
            self.in_flight.future.exception()

    def close(self) -> InFlight | None:
        """Wait for the worker and stop it; the batch still in flight, whose rollouts are
        dropped (its prompts are not: ``RolloutCallback`` keeps them for a checkpoint)."""
        flight, self.in_flight = self.in_flight, None
        if flight is not None:
            error = flight.future.exception()
            if error is not None:
                rank_zero_warn(
                    f"lit_rl: the rollouts sampled ahead, never trained on, failed: {error}"
                )
        self.executor.shutdown(wait=True)
        return flight
