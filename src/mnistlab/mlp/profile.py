"""The seed's hand-placed timers, as an option (``--profile``): seconds per phase of the batch loop."""

from __future__ import annotations

import time

PHASES = ("gather", "forward", "loss", "backward", "update")


class Phases:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.lap_start = 0.0

    def start(self) -> None:
        if self.enabled:
            self.lap_start = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap (or ``start``) to ``phase``."""
        if self.enabled:
            now = time.perf_counter()
            self.totals[phase] += now - self.lap_start
            self.lap_start = now

    def take(self) -> dict[str, float]:
        """The epoch's totals as history entries (``time_<phase>``), and a fresh start."""
        out = {f"time_{k}": round(v, 6) for k, v in self.totals.items()}
        self.totals = dict.fromkeys(PHASES, 0.0)
        return out
