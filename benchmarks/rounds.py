"""What the CPU benchmarks share: their common options, rounds that run every contender once in a
rotating order, one fresh process per measurement, and medians over the epochs that count.

The machine is shared, so no benchmark times its contenders one after another: each round runs
every contender once, and the order rotates from round to round, so that a neighbour's load (or a
warm cache left behind) hits them alike. A contender runs in its own process, so none inherits
another's threads, allocator or caches; the process prints its result as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import cpu_class  # benchmarks/ is not a package: a benchmark puts its own folder on sys.path


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    rounds: int,
    threads: int | str | None,
    threads_help: str,
    threads_type=int,
    held: str = "every contender",
    rounds_aliases: tuple[str, ...] = (),
    rounds_help: str = "rounds; each runs every contender once, in a rotating order",
) -> None:
    """--rounds (alias --runs), --threads, --cpu-class and --json, with one meaning in every benchmark.

    ``threads=None`` keeps --threads for the benchmark's own worker processes (hidden from --help)."""
    parser.add_argument(
        "--rounds", "--runs", *rounds_aliases, dest="rounds", type=int, default=rounds,
        help=f"{rounds_help} (default {rounds})",
    )
    parser.add_argument(
        "--threads", type=threads_type, default=threads,
        help=argparse.SUPPRESS if threads is None else threads_help,
    )
    parser.add_argument(
        "--cpu-class", choices=cpu_class.CLASSES, default="native",
        help=f"native: what the CPU has; avx2: hold {held} to AVX2 (see cpu_class.py)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """Round ``round_index``'s order: the contenders rotated by it, so none always goes first."""
    k = round_index % len(names) if names else 0
    return [*names[k:], *names[:k]]


@contextlib.contextmanager
def timing_lock(path: str | None) -> Iterator[None]:
    """An exclusive flock on ``path`` while the block runs (nothing without a path): a shared
    machine's timing lock, so that two people never time on the same cores at once."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def run_rounds(
    names: Sequence[str],
    rounds: int,
    run: Callable[[str], dict],
    describe: Callable[[dict], tuple[str, float, str]],
    lock: str | None = None,
) -> dict[str, list[dict]]:
    """Every contender once per round, each round in its rotated order; ``run(name)`` measures (a
    result with ``wall_s``, or ``error``). Each result gets its line as it comes: ``describe(result)``
    gives what was measured, the test accuracy, and details (threads, levers). ``lock``: a timing
    lock file held for each round and let go between rounds. Results by contender."""
    width = max(map(len, names), default=0)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        with timing_lock(lock):
            for name in rotated(names, r):
                res = run(name)
                results[name].append(res)
                if "error" in res:
                    said = f"FAILED: {res['error']}"
                else:
                    measured, accuracy, details = describe(res)
                    said = (f"{measured}  test acc {100 * accuracy:.2f}%  "
                            f"({details}, wall {res['wall_s']:.0f} s)")
                print(f"  round {r + 1} {name:<{width}} {said}", flush=True)
    return results


def run_worker(
    command: list[str], env: dict[str, str] | None = None, timeout: float | None = None, marker: str = ""
) -> dict:
    """Run one measurement in a fresh process and read its result: the last stdout line that starts
    with ``marker``, as JSON. A failure or a timeout becomes ``{"error": ...}`` so the other rounds
    still run; ``wall_s`` is the whole process's wall time."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:  # a loaded machine can stretch one contender past any limit
        return {"error": f"over the {timeout:g} s timeout", "wall_s": time.perf_counter() - t0}
    said = [line[len(marker):] for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not said:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": time.perf_counter() - t0}
    result = json.loads(said[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def counted_epochs(values: Sequence[float]) -> list[float]:
    """The epochs after the first, which carries one-off costs (tracing, compiling, kernel choice);
    all of them when there is only one."""
    return list(values[1:] if len(values) > 1 else values)


def pooled_epochs(runs: Iterable[dict], key: str = "epoch_s", scale: float = 1.0) -> list[float]:
    """``key``'s counted epochs of every run that did not fail, times ``scale``."""
    return [scale * v for run in runs if "error" not in run for v in counted_epochs(run.get(key, []))]


def epoch_median(runs: Iterable[dict], key: str = "epoch_s", scale: float = 1.0) -> float:
    """The median of the pooled counted epochs (nan: none)."""
    values = pooled_epochs(runs, key, scale)
    return statistics.median(values) if values else float("nan")


def print_header(cpu_class_name: str, kinds: Iterable[str]) -> None:
    """The report's first lines: the CPU, its class in this run, and what each library actually uses."""
    print(cpu_class.header(cpu_class_name), flush=True)
    for kind in kinds:
        print(f"  {kind} uses: {cpu_class.probe(kind, cpu_class_name)}", flush=True)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def write_json(path: str | os.PathLike | None, record: dict) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(record, fh, indent=2, default=str)
            fh.write("\n")
