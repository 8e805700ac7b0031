"""A clean stop of a training run: SIGINT/SIGTERM set a flag, the loop finishes its step, saves
the run as interrupted and returns; a second Ctrl-C stops at once, without saving."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and returns.

    In a distributed job a signal only marks the stop ``pending``: the ranks agree on it at the
    same step (distributed.StepAgreement), so no rank stops while the others wait for it.
    """

    def __init__(self, deferred: bool = False) -> None:
        self.requested = False
        self.pending = False
        self.deferred = deferred
        self.signal_name = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        if (self.requested or self.pending) and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.pending = True
        self.requested = self.requested or not self.deferred
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self):
        """The process's signal handlers, replaced while the loop runs and restored after it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
