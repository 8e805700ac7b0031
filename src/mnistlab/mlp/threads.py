"""How many BLAS threads the MLP's matrix products use.

The MLP's products are small (a 500 x 784 batch times 784 x 70 weights): a second BLAS thread
helps on an idle machine, but when the cores are busy with other processes every product waits
for a helper thread that the OS has not scheduled, and training gets many times slower (seen
here: 6.6-13 s instead of about 0.5 s per epoch). ``"auto"`` therefore uses the cores that the 1-minute
load average leaves idle, at least one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError


def auto_threads() -> int:
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def resolve(threads: int | str | None) -> int | None:
    if threads is None:
        return None
    if threads == "auto":
        return auto_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or 'auto', got {threads!r}")
    return threads


@contextlib.contextmanager
def blas_threads(threads: int | str | None) -> Iterator[tuple[int | None, list[Any]]]:
    """Limit NumPy's BLAS to ``threads`` threads inside the block (None: leave it alone). Yields
    the limit applied (None if none) and the BLAS libraries' threadpoolctl controllers, through
    which the count can change within the block (see ThreadChoice)."""
    n = resolve(threads)
    if n is None:
        yield None, []
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # an optional nicety: without it the BLAS keeps its own default
        yield None, []
        return
    blas = ThreadpoolController().select(user_api="blas")
    with blas.limit(limits=n):
        yield n, blas.lib_controllers


class ThreadChoice:
    """Within a limit of ``most`` BLAS threads, time training batches with all of them and with
    one, and keep the faster.

    On small virtual machines a second vCPU can sit across a slow cache link for a while, and then
    every buffer both threads touch crosses it each batch, so two threads run slower than one
    (docs/performance.md has the figures). So the trainer probes both at the start, again when the
    chosen setting's batches get ``SLOWER`` times slower than when it was chosen, and every
    ``every_one`` epochs while on one thread (the link may have recovered). ``log`` keeps (epoch,
    threads chosen, microseconds per image with ``most`` threads, with one).
    """

    SKIP_IMAGES = 3000  # after a switch: caches and the idle thread settle
    TIMED_IMAGES = 8000
    SLOWER = 1.25

    def __init__(self, most: int, batch: int, libs: list[Any], every_one: int = 3) -> None:
        self.libs = libs  # threadpoolctl controllers of the BLAS libraries (see blas_threads)
        self.most, self.batch, self.every_one = most, batch, every_one
        self.skip = max(1, -(-self.SKIP_IMAGES // batch))
        self.timed = max(2, -(-self.TIMED_IMAGES // batch))
        self.steps: list[list] = []  # probe steps to go: [threads, batches left to skip, timings]
        self.results: dict[int, float] = {}
        self.chosen = most
        self.reference = 0.0  # median seconds per batch of the chosen setting when it was chosen
        self.window: list[float] = []
        self.epoch = 0
        self.last_probe: int | None = None
        self.log: list[tuple[int, int, float, float]] = []

    def _set(self, n: int) -> None:
        for lib in self.libs:
            lib.set_num_threads(n)

    def _probe(self) -> None:
        self.last_probe = self.epoch
        self.steps = [[self.most, self.skip, []], [1, self.skip, []]]
        self.window = []
        self._set(self.most)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.steps:
            return
        if self.last_probe is None or (self.chosen == 1 and epoch - self.last_probe >= self.every_one):
            self._probe()

    def batch_done(self, seconds: float) -> None:
        if not self.steps:
            self.window.append(seconds)
            if len(self.window) == self.timed:
                drifted = statistics.median_high(self.window) > self.SLOWER * self.reference
                self.window = []
                if drifted:
                    self._probe()
            return
        step = self.steps[0]
        if step[1]:
            step[1] -= 1
            return
        step[2].append(seconds)
        if len(step[2]) < self.timed:
            return
        self.results[step[0]] = statistics.median_high(step[2])
        self.steps.pop(0)
        if self.steps:
            self._set(self.steps[0][0])
            return
        many, one = self.results[self.most], self.results[1]
        self.chosen = 1 if one < 0.97 * many else self.most  # a clear win only: one thread is the exception
        self.reference = self.results[self.chosen]
        self._set(self.chosen)
        self.log.append((self.epoch, self.chosen, 1e6 * many / self.batch, 1e6 * one / self.batch))

