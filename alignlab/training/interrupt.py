"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM asks the loop to finish the step it is in,
write a checkpoint and exit; a second Ctrl-C stops at once. A repeated SIGTERM does not (launchers
such as torchrun and Slurm may send it to every process more than once while waiting for them).

Every process must stop after the same step, so the loop asks ``agreed`` once per step: a
request seen by any process stops them all.
"""

from __future__ import annotations

import signal
import threading

import torch

from alignlab.errors import Interrupted
from alignlab.training.distributed import Dist

__all__ = ["Interrupted", "StopRequest"]
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While entered, SIGINT and SIGTERM set ``signal_name`` instead of stopping the program."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler installed from C, which cannot be put back
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the step to end
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def agreed(self, dist: Dist) -> bool:
        """True on every process when any process has been asked to stop."""
        asked = torch.tensor([0.0 if self.signal_name is None else 1.0], dtype=torch.float64)
        return bool(dist.sum(asked).item() > 0)
