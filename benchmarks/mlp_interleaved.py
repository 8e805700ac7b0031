"""Old against new MLP trainer code in one process: CPU and wall time per epoch of fits that alternate.

    git worktree add --detach /tmp/mlp-old main
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mlp_interleaved.py old=/tmp/mlp-old/src new=src
    # thread settings side by side (NAME=SRC@THREADS; --threads sets the rest; the timed thread
    # choice is off, so each variant keeps its setting):
    PYTHONPATH=src python benchmarks/mlp_interleaved.py one=src@1 old=/tmp/mlp-old/src@2 new=src@2

Each SRC's ``mnistlab`` package is copied under another name (``mnistlab_old``, ...) so that both load
side by side (the package imports itself relatively); the fits alternate, the order rotating every
round (rounds.rotated), on the same MNIST arrays, with the benchmark's setup (default preset, batch
500, raw images, the per-epoch test pass, one BLAS thread unless told). Fits in one process share its memory
placement, which on the project's small VMs varies more between processes than the code changes
being compared.
Prints per-round medians, then each variant's minimum, 10th percentile and median CPU and wall ms
per epoch (the first epoch, which holds the setup, left out; on a shared machine the low
percentiles show the speed of the rounds that had the cores to themselves), the median's ratio to
the first variant, and its parameter hashes (the same hash means bit-identical training).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import rounds  # benchmarks/ is not a package: run as a script, its folder is on sys.path


def load_variants(specs: list[str], root: str, threads: int) -> tuple[dict, dict]:
    variants, thread_counts, loaded = {}, {}, {}
    for spec in specs:
        name, src = spec.split("=", 1)
        src, _, count = src.partition("@")
        thread_counts[name] = int(count) if count else threads
        if src in loaded:  # the same code with other threads
            variants[name] = loaded[src]
            continue
        shutil.copytree(os.path.join(src, "mnistlab"), os.path.join(root, name, f"mnistlab_{name}"))
        sys.path.insert(0, os.path.join(root, name))
        package = importlib.import_module(f"mnistlab_{name}")
        for sub in ("mlp", "data"):
            importlib.import_module(f"mnistlab_{name}.{sub}")
        variants[name] = loaded[src] = package
    return variants, thread_counts


def fit(
    package, images, epochs: int, preset: str, threads: int, **overrides
) -> tuple[list[float], list[float], str]:
    """CPU and wall ms of each counted epoch and the parameters' hash; ``overrides`` go to the preset."""
    train_x, train_y, test_x, test_y = images
    cfg = package.mlp.preset(preset, batch_size=500, epochs=epochs, **overrides)
    model = package.mlp.MLP(cfg, preprocess=package.data.Preprocessor.fit(cfg.preprocess, train_x))
    cpu, wall, last = [], [], [time.process_time(), time.perf_counter()]

    def lap(_row) -> None:
        now = time.process_time(), time.perf_counter()
        cpu.append(now[0] - last[0])
        wall.append(now[1] - last[1])
        last[:] = now

    trainer = package.mlp.Trainer(model, adapt_threads=False)
    trainer.fit(train_x, train_y, test=(test_x, test_y), threads=threads, callback=lap)
    digest = hashlib.sha1(model.params.tobytes()).hexdigest()[:12]
    counted = rounds.counted_epochs
    return [1000 * c for c in counted(cpu)], [1000 * w for w in counted(wall)], digest


def variant_parser(description: str, rounds: int, epochs: int) -> argparse.ArgumentParser:
    """The options of the benchmarks that compare trainer code side by side."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="NAME=SRC[@THREADS], SRC holding a mnistlab/ package")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads of the variants that name none")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--epochs", type=int, default=epochs)
    return p


def main() -> None:
    p = variant_parser(__doc__, rounds=10, epochs=5)
    p.add_argument("--preset", default="default")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        variants, threads = load_variants(args.variants, root, args.threads)
        ds = next(iter(variants.values())).data.load_dataset("mnist", progress=False)
        labels = ds.train_labels.astype(np.int64), ds.test_labels.astype(np.int64)
        images = (ds.train_images, labels[0], ds.test_images, labels[1])
        names = list(variants)
        per_epoch = {n: [] for n in names}
        wall = {n: [] for n in names}
        hashes = {n: set() for n in names}
        for r in range(args.rounds):
            for name in rounds.rotated(names, r):
                ms, wall_ms, digest = fit(variants[name], images, args.epochs, args.preset, threads[name])
                per_epoch[name] += ms
                wall[name] += wall_ms
                hashes[name].add(digest)
            last = len(rounds.counted_epochs(range(args.epochs)))  # this round's epochs
            medians = "  ".join(
                f"{n} {statistics.median(per_epoch[n][-last:]):.0f}/{statistics.median(wall[n][-last:]):.0f}"
                for n in names
            )
            load = rounds.load_average()
            print(f"round {r + 1} (CPU/wall): {medians} ms | load average {load:.1f}", flush=True)
    first = statistics.median(per_epoch[names[0]]), statistics.median(wall[names[0]])
    for name in names:
        parts = []
        for what, times, base in (("CPU", per_epoch[name], first[0]), ("wall", wall[name], first[1])):
            ms = sorted(times)
            parts.append(
                f"{what} per epoch min {ms[0]:.1f}, p10 {ms[len(ms) // 10]:.1f}, "
                f"median {statistics.median(ms):.1f} ms (quartiles {ms[len(ms) // 4]:.0f}-"
                f"{ms[3 * len(ms) // 4]:.0f}), {statistics.median(ms) / base:.3f}x {names[0]}"
            )
        print(f"{name} ({threads[name]} thread(s), {len(wall[name])} epochs): {'; '.join(parts)}; "
              f"parameter hashes {sorted(hashes[name])}")


if __name__ == "__main__":
    main()
