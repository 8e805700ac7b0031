"""The MLP's first layer per chunk on one thread: the core/tail split it had against the staircase.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mlp_staircase_chunks.py --chunks 400
    # and with OPENBLAS_CORETYPE=Haswell for OpenBLAS's AVX2 kernels

Times the gather (uint8 rows taken and cast to float32), the forward product and the weight
gradient of the default network's first layer (72 working units) on the same random 500-image
MNIST chunks, the variants alternating chunk by chunk: the core/tail split (483 columns for every
image, the 234 rarer ones for the images with ink there, their share added into z) as main had it
until the staircase, and the staircase as ``mnistlab.mlp.staircase`` plans it. Prints medians in µs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mnistlab.data import Preprocessor, load_dataset
from mnistlab.mlp import MLP, preset, staircase
from mnistlab.mlp.layout import TrainData

CORE = 483  # the core/tail split's core columns on MNIST (split="auto")
UNITS = 72  # the default network's first layer, padded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=400)
    args = p.parse_args()
    ds = load_dataset("mnist", progress=False)
    images = ds.train_images.reshape(len(ds.train_images), -1)
    # the staircase's layout as the trainer makes it: its column order, width and reach levels
    model = MLP(preset("default"), preprocess=Preprocessor.fit("unit", ds.train_images))
    data = TrainData(model, ds.train_images, ds.train_labels, "auto")
    rows, width, levels = data.rows, data.width, data.levels
    active = data.n_active
    stairs = staircase.Staircase(levels, width, np.array([0]), 500)

    reach = np.where(images[:, data.first_rows[:active]] != 0, np.arange(1, active + 1), 0).max(axis=1)
    touches = reach > CORE
    core = np.ascontiguousarray(rows[:, :CORE])
    tail_rows = np.ascontiguousarray(rows[touches, CORE:active])
    tail_row_of = np.full(len(images), -1)
    tail_row_of[touches] = np.arange(np.count_nonzero(touches))

    rng = np.random.default_rng(0)
    weights = (0.01 * rng.standard_normal((784, UNITS))).astype(np.float32)
    delta = (0.01 * rng.standard_normal((500, UNITS))).astype(np.float32)
    z, tail_z = np.empty((500, UNITS), np.float32), np.empty((500, UNITS), np.float32)
    grad = np.empty((784, UNITS), np.float32)
    raw, x = np.empty((500, width), np.uint8), np.empty((500, width), np.float32)
    raw_core, x_core = np.empty((500, CORE), np.uint8), np.empty((500, CORE), np.float32)
    raw_tail, x_tail = np.empty((500, active - CORE), np.uint8), np.empty((500, active - CORE), np.float32)

    def core_tail(idx: np.ndarray) -> tuple[float, float, float]:
        idx = np.concatenate([idx[touches[idx]], idx[~touches[idx]]])
        n = int(np.count_nonzero(touches[idx]))
        t0 = time.perf_counter()
        np.copyto(x_core, np.take(core, idx, axis=0, out=raw_core, mode="clip"))
        np.copyto(x_tail[:n], np.take(tail_rows, tail_row_of[idx[:n]], axis=0, out=raw_tail[:n], mode="clip"))
        t1 = time.perf_counter()
        np.matmul(x_core, weights[:CORE], out=z)
        np.matmul(x_tail[:n], weights[CORE:active], out=tail_z[:n])
        z[:n] += tail_z[:n]
        t2 = time.perf_counter()
        np.matmul(x_core.T, delta, out=grad[:CORE])
        np.matmul(x_tail[:n].T, delta[:n], out=grad[CORE:active])
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    def stair(idx: np.ndarray) -> tuple[float, float, float]:
        arranged, (steps,) = stairs.arrange(idx)
        t0 = time.perf_counter()
        groups = steps.forward()
        data.gather(arranged, x, raw, groups)
        t1 = time.perf_counter()
        for a, b, columns in groups:
            np.matmul(x[a:b, :columns], weights[:columns], out=z[a:b])
        t2 = time.perf_counter()
        mine, theirs = steps.gradient()
        for lo, hi, used in mine + theirs:
            np.matmul(x[:used, lo:hi].T, delta[:used], out=grad[lo:hi])
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    variants = {"core/tail": core_tail, "staircase": stair}
    times: dict[str, list] = {name: [] for name in variants}
    for c in range(args.chunks + 10):
        idx = rng.choice(len(images), 500, replace=False)
        for name in list(variants)[:: 1 if c % 2 else -1]:
            took = variants[name](idx)
            if c >= 10:  # warm-up
                times[name].append(took)
    first = None
    for name, took in times.items():
        us = 1e6 * np.array(took)
        total = float(np.median(us.sum(axis=1)))
        first = first or total
        gather, forward, gradient = np.median(us, axis=0)
        print(
            f"{name:10s} gather {gather:5.0f}  forward {forward:5.0f}  gradient {gradient:5.0f}  "
            f"total {total:5.0f} µs  {total / first:.3f}x"
        )
    print(f"staircase plan: {stairs.plans[500]}")


if __name__ == "__main__":
    main()
