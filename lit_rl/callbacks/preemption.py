"""Stop signals (SIGTERM from a scheduler's preemption, SIGINT from Ctrl+C) as a request to
stop after the current step, and the exit that says a run was preempted."""

import signal
import sys
import threading
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Trainer

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Raised after the checkpoint of a stopped run is written; the process exits with
    ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), the status of a process ended by that
    signal, so schedulers and shells see that the run did not finish."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StopSignals:
    """While installed, SIGTERM and SIGINT set ``received`` instead of ending the process at
    whatever line it is on; whoever installed them stops at a safe point. A second SIGINT
    stops at once (KeyboardInterrupt), for a user who does not want to wait."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        # Handlers can only be set from the main thread (not, e.g., in a notebook's worker).
        if threading.current_thread() is not threading.main_thread():
            return
        self.received = None  # a new fit
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"lit-rl: received {signal.Signals(signum).name}: finishing the current step, then "
            "writing a checkpoint (Ctrl+C again stops at once, without one)",
            file=sys.stderr,
            flush=True,
        )

    def received_by_any(self, trainer: Trainer) -> int | None:
        """The signal any process received (processes stop together; a scheduler may signal
        only one of them); a collective when there are several processes."""
        if trainer.world_size == 1:
            return self.received
        local = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        received = int(trainer.strategy.reduce(local, reduce_op="max"))
        return received or None
