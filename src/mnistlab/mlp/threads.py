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
from typing import Iterator

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
def blas_threads(threads: int | str | None) -> Iterator[int | None]:
    """Limit NumPy's BLAS to ``threads`` threads inside the block (None: leave it alone)."""
    n = resolve(threads)
    if n is None:
        yield None
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional nicety: without it the BLAS keeps its own default
        yield None
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield n
