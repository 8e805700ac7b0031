"""How many BLAS threads the MLP's matrix products use.

``"auto"`` (the default) starts from every core this process may run on and lets the trainer
decide by timing (``ThreadChoice``): a second BLAS thread helps on an idle machine, but when other
processes keep the cores busy, every product waits for a helper thread the OS has not scheduled
and one thread is much faster. Which case holds is measured on the training batches themselves,
at the start and again when the chosen setting slows down, never guessed from the load average
(which still counts the work of the last minute after it has finished).
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError


def auto_threads() -> int:
    """Every core this process may run on (its CPU affinity, where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return os.cpu_count() or 1


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

    A second thread helps only while the cores are free and close: when other processes keep a
    core busy, or a small virtual machine's second vCPU sits across a slow cache link (every buffer
    both threads touch then crosses it each batch), one thread is faster (docs/performance.md has
    the figures). So the trainer probes both at the start (one thread first, as the reference), again
    when the batches of ``most`` threads get ``SLOWER`` times slower than when chosen, and, while on
    one thread, after ``every_one`` epochs, then twice as long each time one thread wins again (the
    neighbours may have finished). A probe of ``most`` threads stops as soon as its batches are
    clearly slower than one thread's (``GIVE_UP``): on a busy machine a many-thread batch can take
    ten times longer, and a full probe would cost more than it could save. ``log`` keeps (epoch,
    threads chosen, microseconds per image with ``most`` threads, with one).
    """

    SKIP_IMAGES = 3000  # after a switch: caches and the idle thread settle
    TIMED_IMAGES = 8000
    SLOWER = 1.25
    GIVE_UP = 1.5  # a probe of many threads ends once its median batch is this much slower than one thread's

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
        self.wait = every_one  # epochs on one thread before the next probe
        self.log: list[tuple[int, int, float, float]] = []

    def _set(self, n: int) -> None:
        for lib in self.libs:
            lib.set_num_threads(n)

    def _probe(self) -> None:
        self.last_probe = self.epoch
        self.steps = [[1, self.skip, []], [self.most, self.skip, []]]
        self.window = []
        self._set(1)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.steps:
            return
        if self.last_probe is None or (self.chosen == 1 and epoch - self.last_probe >= self.wait):
            self._probe()

    def batch_done(self, seconds: float) -> None:
        if not self.steps:
            if self.chosen == 1:  # slower on one thread means busier cores: more threads would not help
                return
            self.window.append(seconds)
            if len(self.window) == self.timed:
                drifted = statistics.median_high(self.window) > self.SLOWER * self.reference
                self.window = []
                if drifted:
                    self._probe()
            return
        step = self.steps[0]
        one = self.results.get(1) if step[0] != 1 else None
        if step[1]:
            step[1] -= 1
            if one is not None and seconds > 4 * self.GIVE_UP * one:  # even settling, far too slow
                self._finish(many=seconds)
            return
        step[2].append(seconds)
        if one is not None and len(step[2]) >= 2 and statistics.median_high(step[2]) > self.GIVE_UP * one:
            self._finish(many=statistics.median_high(step[2]))
            return
        if len(step[2]) < self.timed:
            return
        self.results[step[0]] = statistics.median_high(step[2])
        self.steps.pop(0)
        if self.steps:
            self._set(self.steps[0][0])
            return
        self._finish(many=self.results[self.most])

    def _finish(self, many: float) -> None:
        one = self.results[1]
        self.steps = []
        self.chosen = 1 if one < 0.97 * many else self.most  # a clear win only: one thread is the exception
        one_again = self.chosen == 1 and self.log and self.log[-1][1] == 1
        self.wait = 2 * self.wait if one_again else self.every_one
        self.reference = one if self.chosen == 1 else many
        self._set(self.chosen)
        self.log.append((self.epoch, self.chosen, 1e6 * many / self.batch, 1e6 * one / self.batch))
