"""How many threads the MLP's matrix products use.

With more than one, the trainer keeps BLAS on one thread and spreads the work over its own threads
(``RowSplit``): they divide each chunk's list of first-layer products (mlp/staircase.py), a worker
gathers the next chunk while the calling thread computes the loss, each thread updates the
parameters whose gradient it computed, and the per-epoch test pass is divided by blocks of
images -- the same products as one thread runs in turn, bit for bit, where OpenBLAS's own threads
change the last bits and lose their time in waking and synchronizing helpers for products this
small (docs/performance.md, "Threads").

``"auto"`` (the default) starts from every core this process may run on and lets the trainer
decide by timing (``ThreadChoice``): a second thread helps on an idle machine, but when other
processes keep the cores busy, every product waits for a worker the OS has not scheduled and one
thread is much faster. Which case holds is measured on the training batches themselves, at the
start and again when the chosen setting slows down, never guessed from the load average (which
still counts the work of the last minute after it has finished).
"""

from __future__ import annotations

import contextlib
import os
import queue
import statistics
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

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
    which the count can change within the block (see product_threads)."""
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


@contextlib.contextmanager
def product_threads(threads: int | str | None) -> Iterator[tuple[int | None, RowSplit | None]]:
    """``blas_threads``, plus a ``RowSplit`` over the threads allowed where there are several (None
    otherwise): BLAS itself is then kept on one thread and the split spreads the products."""
    with blas_threads(threads) as (used, libs):
        if not used or used < 2 or not libs:
            yield used, None
            return
        for lib in libs:
            lib.set_num_threads(1)
        split = RowSplit(used)
        try:
            yield used, split
        finally:
            split.close()


def deal(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` runs, in order, as even as whole items allow (some may be empty)."""
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
    return [items[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


class RowSplit:
    """The batch loop's work on ``parts`` cores: one part run by the calling thread, the others by
    persistent worker threads, each calling BLAS with one thread (NumPy releases the GIL inside
    matmul and in ufuncs on large arrays).

    The threads divide lists of products that one thread would run in turn (same shapes, same
    buffers), and an update that computes each parameter from its own entries alone (SGD's), so
    training is bit-identical to training on one thread, whichever the thread choice picks. Where
    a product is cut by its rows only because of the threads (the deeper layers' forward
    products, see Backprop), ``reproduces`` checks once per layout on random data that the cut
    changes no bit (a cut off the BLAS kernel's row block makes its edge kernels add in another
    order). OpenBLAS's own threads are not bit-identical: they change the result's last bits
    (docs/performance.md).
    """

    def __init__(self, parts: int) -> None:
        self.parts = max(1, parts)
        self.active = self.parts > 1  # False: every product in the calling thread
        self.kept: dict[tuple, bool] = {}  # per product layout and cuts: whether cutting reproduces it
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks: list[queue.SimpleQueue] = []
        self._workers: list[threading.Thread] = []
        for _ in range(self.parts - 1):
            tasks: queue.SimpleQueue = queue.SimpleQueue()
            worker = threading.Thread(target=self._serve, args=(tasks,), name="mnistlab-rows", daemon=True)
            worker.start()
            self._tasks.append(tasks)
            self._workers.append(worker)

    def _serve(self, tasks: queue.SimpleQueue) -> None:
        # the trainer checks its results for NaN/inf itself, as in the calling thread's errstate
        with np.errstate(all="ignore"):
            while (job := tasks.get()) is not None:
                try:
                    job()
                    self._done.put(None)
                except BaseException as exc:  # handed to the caller, which raises it
                    self._done.put(exc)

    def close(self) -> None:
        for tasks in self._tasks:
            tasks.put(None)
        for worker in self._workers:
            worker.join()
        self._tasks, self._workers = [], []
        self.active = False

    def spread(self, jobs: Sequence[Callable[[], Any]]) -> None:
        """Run ``jobs[0]`` in the calling thread and each of the others on a worker (at most
        ``parts`` jobs, touching disjoint outputs); returns when all are done."""
        for tasks, job in zip(self._tasks, jobs[1:]):
            tasks.put(job)
        try:
            jobs[0]()
        finally:  # every worker's answer is taken, so none is left for the next call
            errors = [exc for exc in (self._done.get() for _ in jobs[1:]) if exc is not None]
        if errors:
            raise errors[0]

    def reproduces(self, a: np.ndarray, b: np.ndarray, bounds: tuple[int, ...]) -> bool:
        """Whether ``a @ b`` cut into the row blocks ``bounds`` equals the whole product (checked
        once per layout)."""
        key = (a.shape, a.strides, b.shape, b.strides, a.dtype.str, bounds)
        if key not in self.kept:
            rng = np.random.default_rng(0)
            a_like, b_like = _random_like(a, rng), _random_like(b, rng)
            self.kept[key] = _cut_reproduces(a_like, b_like, np.matmul(a_like, b_like), bounds)
        return self.kept[key]


def _cut_reproduces(a: np.ndarray, b: np.ndarray, whole: np.ndarray, bounds: tuple[int, ...]) -> bool:
    blocks = [np.matmul(a[lo:hi], b) for lo, hi in zip(bounds, bounds[1:])]
    return np.array_equal(np.concatenate(blocks), whole)


def _random_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random array of ``x``'s shape, dtype and strides (a transposed view or a slice of a
    wider buffer stays one): a product's kernel may depend on its layout."""
    if any(s < 0 for s in x.strides) or x.size == 0:
        return rng.standard_normal(x.shape).astype(x.dtype)
    span = sum((n - 1) * s for n, s in zip(x.shape, x.strides)) // x.itemsize + 1
    flat = rng.standard_normal(span).astype(x.dtype)
    return np.lib.stride_tricks.as_strided(flat, x.shape, x.strides)


class ThreadChoice:
    """Whether the first layer's products run on the split's ``most`` threads or on one, decided by
    timing training batches.

    A second thread helps only while a second core is free: when other processes keep the cores
    busy, each product waits for a worker the OS has not scheduled, and one thread is faster. So a
    probe times the two settings on alternating batches (one thread first), so that both meet the
    same neighbours: one untimed batch of each, then ``TIMED_IMAGES`` worth of each. It keeps one
    thread only when its median batch is clearly faster, and ends early once the split's batches
    (three at least) are ``GIVE_UP`` times slower (on a busy machine they can take ten times
    longer). Probes run at the start; while on the split, again when ``patience`` windows in a row
    of its batches are ``SLOWER`` than when chosen (after a probe that kept the split, a longer
    slowdown is asked for next time: noise, or a machine slower for both, should not keep
    re-probing); while on one thread, after ``every_one`` epochs, then twice as long each time one
    thread wins again (the neighbours may have finished). The choice never changes the arithmetic
    (see RowSplit). ``log`` keeps (epoch, threads chosen, microseconds per image with ``most``
    threads, with one).
    """

    TIMED_IMAGES = 8000
    SLOWER = 1.25
    GIVE_UP = 1.5
    CLEAR_WIN = 0.97  # one thread is kept only below this fraction of the split's batch time
    MOST_PATIENCE = 8

    def __init__(self, split: RowSplit, batch: int, every_one: int = 3) -> None:
        self.split = split
        self.most, self.batch, self.every_one = split.parts, batch, every_one
        self.timed = max(2, -(-self.TIMED_IMAGES // batch))
        self.probe: dict[int, list[float]] | None = None  # batch times per setting while probing
        # a probe's first batch of each setting is not timed: the split's first one also checks its
        # cuts, and a switch leaves the caches to the other setting
        self.untimed: dict[int, int] = {}
        self.chosen = self.most
        self.reference = 0.0  # median seconds per batch of the chosen setting when it was chosen
        self.window: list[float] = []
        self.epoch = 0
        self.last_probe: int | None = None
        self.wait = every_one  # epochs on one thread before the next probe
        self.patience = 1  # slow windows in a row that start a probe while on the split
        self.slow_windows = 0
        self.log: list[tuple[int, int, float, float]] = []

    @property
    def threads(self) -> int:
        """The setting the next batch runs with."""
        return self.most if self.split.active else 1

    def _set(self, n: int) -> None:
        self.split.active = n > 1

    def _probe(self) -> None:
        self.last_probe = self.epoch
        self.probe = {1: [], self.most: []}
        self.untimed = {1: 1, self.most: 1}
        self.window = []
        self._set(1)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.probe is not None:
            return
        if self.last_probe is None or (self.chosen == 1 and epoch - self.last_probe >= self.wait):
            self._probe()

    def batch_done(self, seconds: float) -> None:
        """Record the batch just run (with ``threads``) and set up the next one."""
        if self.probe is None:
            if self.chosen == 1:  # slower on one thread means busier cores: more threads would not help
                return
            self.window.append(seconds)
            if len(self.window) == self.timed:
                slow = statistics.median_high(self.window) > self.SLOWER * self.reference
                self.window = []
                self.slow_windows = self.slow_windows + 1 if slow else 0
                if self.slow_windows >= self.patience:
                    self._probe()
            return
        ran = self.threads
        if self.untimed[ran]:
            self.untimed[ran] -= 1
        else:
            self.probe[ran].append(seconds)
        one, many = self.probe[1], self.probe[self.most]
        gave_up = (
            len(many) >= 3 and len(one) >= 1
            and statistics.median_high(many) > self.GIVE_UP * statistics.median_high(one)
        )
        if gave_up or (len(one) >= self.timed and len(many) >= self.timed):
            self._finish(statistics.median_high(one), statistics.median_high(many))
        else:
            self._set(self.most if ran == 1 else 1)

    def _finish(self, one: float, many: float) -> None:
        self.probe = None
        self.chosen = 1 if one < self.CLEAR_WIN * many else self.most
        again = bool(self.log) and self.log[-1][1] == self.chosen
        self.wait = 2 * self.wait if again and self.chosen == 1 else self.every_one
        kept_most = again and self.chosen == self.most
        self.patience = min(2 * self.patience, self.MOST_PATIENCE) if kept_most else 1
        self.slow_windows = 0
        self.reference = one if self.chosen == 1 else many
        self._set(self.chosen)
        self.log.append((self.epoch, self.chosen, 1e6 * many / self.batch, 1e6 * one / self.batch))
