"""Where the one-thread NumPy MLP's time has no lever left: two measurements behind docs/performance.md.

    PYTHONPATH=src python benchmarks/mlp_limits.py fixed-cost    # per-batch cost a tiny net still pays
    PYTHONPATH=src python benchmarks/mlp_limits.py sparse        # a sparse first layer in C against BLAS
    PYTHONPATH=src python benchmarks/mlp_limits.py layouts       # the first layer's products, other layouts

``fixed-cost`` trains the default network and a tiny one (hidden (8, 8), images inked in 16 columns
only, so that every product and elementwise pass is almost free) in turn, in one process, and prints
each one's microseconds per batch of 500 (best epoch after the first, test pass included): what the
tiny one still takes is the trainer's fixed cost per batch (interpreter, NumPy calls, small arrays).

``sparse`` compiles (gcc, at run time) a first layer that multiplies only each image's inked pixels
by rows of W1, with four accumulators held in registers per image and W1's rows in blocks that stay
in the L1 cache, and times it on chunks of 500 real MNIST images against the dense BLAS products the
trainer runs (an upper bound on their speed: one product over the staircase's mean columns, warm).

``layouts`` times the first layer's forward and gradient products (500 x 453 x 72) with their
operands stored the trainer's way and transposed, and a chunk's gather both ways: uint8 rows taken
and cast to float32 (the trainer's), or float32 rows taken from a float32 copy of the training set.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package
import mlp_interleaved

UNITS = 72  # the default net's first hidden layer in the working layout (70 padded to 8)
KERNEL = r"""
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#define H STRIDE
#if defined(__AVX512F__)
typedef __m512 vec;
#define W_ 16
#define LOAD _mm512_loadu_ps
#define STORE _mm512_storeu_ps
#define FMA _mm512_fmadd_ps
#define SET1 _mm512_set1_ps
#else
typedef __m256 vec;
#define W_ 8
#define LOAD _mm256_loadu_ps
#define STORE _mm256_storeu_ps
#define FMA _mm256_fmadd_ps
#define SET1 _mm256_set1_ps
#endif
#define NV (STRIDE / W_)
/* z[r] = sum over image r's inked pixels p of val[p] * W[col[p]]; columns in blocks of cb, so
   that a block of W stays in L1 while every image's pixels in it are added. Rows are STRIDE
   floats apart (the units padded to whole vectors). */
void forward(const int32_t *ids, int n, const int64_t *ptr, const uint16_t *col, const float *val,
             const float *w, float *z, int ncols, int cb, int64_t *cur) {
    for (int r = 0; r < n; r++) { cur[r] = ptr[ids[r]]; memset(z + (int64_t)r * H, 0, H * 4); }
    for (int b0 = 0; b0 < ncols; b0 += cb) {
        for (int r = 0; r < n; r++) {
            int64_t p = cur[r], e = ptr[ids[r] + 1];
            if (p >= e || col[p] >= b0 + cb) continue;
            float *zr = z + (int64_t)r * H;
            vec acc[NV];
            for (int k = 0; k < NV; k++) acc[k] = LOAD(zr + k * W_);
            for (; p < e && col[p] < b0 + cb; p++) {
                const float *wr = w + (int64_t)col[p] * H;
                vec v = SET1(val[p]);
                for (int k = 0; k < NV; k++) acc[k] = FMA(v, LOAD(wr + k * W_), acc[k]);
            }
            for (int k = 0; k < NV; k++) STORE(zr + k * W_, acc[k]);
            cur[r] = p;
        }
    }
}
/* g[c] = sum over images r inked at column c of their value times delta[r], blocked likewise. */
void gradient(const int32_t *ids, int n, const int64_t *ptr, const uint16_t *col, const float *val,
              const float *delta, float *g, int ncols, int cb, int64_t *cur) {
    memset(g, 0, (int64_t)ncols * H * 4);
    for (int r = 0; r < n; r++) cur[r] = ptr[ids[r]];
    for (int b0 = 0; b0 < ncols; b0 += cb) {
        for (int r = 0; r < n; r++) {
            int64_t p = cur[r], e = ptr[ids[r] + 1];
            if (p >= e || col[p] >= b0 + cb) continue;
            vec d[NV];
            for (int k = 0; k < NV; k++) d[k] = LOAD(delta + (int64_t)r * H + k * W_);
            for (; p < e && col[p] < b0 + cb; p++) {
                float *gr = g + (int64_t)col[p] * H;
                vec v = SET1(val[p]);
                for (int k = 0; k < NV; k++) STORE(gr + k * W_, FMA(v, d[k], LOAD(gr + k * W_)));
            }
            cur[r] = p;
        }
    }
}
"""


def _mnist():
    from mnistlab.data import load_dataset

    ds = load_dataset("mnist", progress=False)
    return ds.train_images, ds.train_labels.astype(np.int64), ds.test_images, ds.test_labels.astype(np.int64)


def fixed_cost(rounds: int) -> None:
    import mnistlab.data
    import mnistlab.mlp

    x, y, xt, yt = _mnist()

    def narrow(images: np.ndarray) -> np.ndarray:  # 16 inked columns: the staircase multiplies 16
        out = np.zeros_like(images)
        out.reshape(len(images), -1)[:, :16] = images.reshape(len(images), -1)[:, 300:316]
        return out

    nets = {"default": ((70, 30), (x, y, xt, yt)), "tiny": ((8, 8), (narrow(x), y, narrow(xt), yt))}
    best = dict.fromkeys(nets, float("inf"))  # ms per epoch
    for _ in range(rounds):
        for name, (hidden, images) in nets.items():
            _, wall, _ = mlp_interleaved.fit(mnistlab, images, 4, "default", 1, hidden=hidden)
            best[name] = min(best[name], *wall)
    batches = len(x) // 500
    for name, ms in best.items():
        print(f"{name:8s} {1e3 * ms / batches:6.0f} us per batch (best epoch, test pass included)")
    print(f"fixed share of a default batch: {best['tiny'] / best['default']:.0%}")


def best_us(job, rounds: int, calls: int) -> float:
    """Microseconds per call of ``job(i)``, i = 0 .. calls - 1, in the fastest of ``rounds``."""
    job(0)  # warm
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            job(i)
        best = min(best, (time.perf_counter() - t0) / calls)
    return 1e6 * best


def sparse(rounds: int, chunks: int, held: str) -> None:
    x = _mnist()[0].reshape(60000, -1)
    order = np.argsort(-(x > 0).sum(0), kind="stable")  # most often inked first, as the staircase
    x = x[:, order]
    inked = x != 0
    ncols = int(inked.any(0).sum())
    ptr = np.zeros(len(x) + 1, np.int64)
    ptr[1:] = np.cumsum(inked.sum(1))
    rows, cols = np.nonzero(inked)
    col, val = cols.astype(np.uint16), x[rows, cols].astype(np.float32)
    isa = "-mavx512f" if held == "native" and "avx512f" in cpu_class.cpu_flags() else "-mavx2"
    lanes = 16 if isa == "-mavx512f" else 8
    stride = -(-UNITS // lanes) * lanes
    with tempfile.TemporaryDirectory() as tmp:
        src, lib_path = os.path.join(tmp, "k.c"), os.path.join(tmp, "k.so")
        with open(src, "w") as f:
            f.write(KERNEL)
        build = ["gcc", "-O3", isa, "-mfma", f"-DSTRIDE={stride}", "-shared", "-fPIC", "-o", lib_path, src]
        subprocess.run(build, check=True)
        lib = ctypes.CDLL(lib_path)
    rng = np.random.default_rng(0)
    w = np.zeros((784, stride), np.float32)
    w[:, :UNITS] = rng.standard_normal((784, UNITS))
    delta = np.zeros((500, stride), np.float32)
    delta[:, :UNITS] = rng.standard_normal((500, UNITS))
    z, g = np.empty((500, stride), np.float32), np.empty((784, stride), np.float32)
    cur = np.empty(500, np.int64)
    perm = rng.permutation(len(x)).astype(np.int32)
    ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in (ptr, col, val)]
    mean_columns = 453  # the staircase's columns per image at batch 500 (docs/performance.md)
    xb = x[perm[:500], :mean_columns].astype(np.float32)

    def timed(job) -> float:
        return best_us(job, rounds, chunks)

    def c_kernel(fn, src_arr, out):
        def job(c: int) -> None:
            ids = np.ascontiguousarray(perm[c * 500 : (c + 1) * 500])
            fn(ids.ctypes.data_as(ctypes.c_void_p), 500, *ptrs, src_arr.ctypes.data_as(ctypes.c_void_p),
               out.ctypes.data_as(ctypes.c_void_p), ncols, 64, cur.ctypes.data_as(ctypes.c_void_p))
        return job

    ids = perm[:500]
    c_kernel(lib.forward, w, z)(0)
    dense = x[ids].astype(np.float32) @ w
    error = np.abs(z - dense).max() / np.abs(dense).max()
    print(f"check: the sparse forward's largest difference from BLAS (relative): {error:.1e}")
    print(f"C kernel built with {isa}")
    print(f"inked pixels per image {ptr[-1] / len(x):.0f}, active columns {ncols}")
    w72, d72, z72, g72 = w[:, :UNITS], delta[:, :UNITS], z[:, :UNITS], g[:mean_columns, :UNITS]
    print(f"forward  per chunk of 500: sparse C {timed(c_kernel(lib.forward, w, z)):.0f} us, "
          f"dense BLAS {timed(lambda c: np.matmul(xb, w72[:mean_columns], out=z72)):.0f} us")
    print(f"gradient per chunk of 500: sparse C {timed(c_kernel(lib.gradient, delta, g)):.0f} us, "
          f"dense BLAS {timed(lambda c: np.matmul(xb.T, d72, out=g72)):.0f} us")


def layouts(rounds: int) -> None:
    rng = np.random.default_rng(0)
    rows, columns = 500, 453
    x = rng.random((rows, columns), dtype=np.float32)
    w = rng.random((columns, UNITS), dtype=np.float32)
    d = rng.random((rows, UNITS), dtype=np.float32)
    x_t, w_t = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)
    z, z_t = np.empty((rows, UNITS), np.float32), np.empty((UNITS, rows), np.float32)
    g, g_t = np.empty((columns, UNITS), np.float32), np.empty((UNITS, columns), np.float32)
    products = {
        "forward  X @ W (the trainer's)": lambda: np.matmul(x, w, out=z),
        "forward  X @ W_T.T (W stored transposed)": lambda: np.matmul(x, w_t.T, out=z),
        "forward  W.T @ X_T (units x images)": lambda: np.matmul(w.T, x_t, out=z_t),
        "gradient X.T @ D (the trainer's)": lambda: np.matmul(x.T, d, out=g),
        "gradient D.T @ X (units x columns)": lambda: np.matmul(d.T, x, out=g_t),
        "gradient X_T @ D": lambda: np.matmul(x_t, d, out=g),
    }
    images = (rng.random((60000, 720)) < 0.2).astype(np.uint8) * 200  # MNIST's size and ink share
    raw, floats = np.ascontiguousarray(images[:, :465]), images[:, :465].astype(np.float32)
    raw_chunk, float_chunk = np.empty((rows, 465), np.uint8), np.empty((rows, 465), np.float32)
    chunk_ids = iter(np.resize(rng.permutation(60000), (10**6, rows)))

    def take_and_cast() -> None:
        np.take(raw, next(chunk_ids), axis=0, out=raw_chunk, mode="clip")
        np.copyto(float_chunk, raw_chunk)

    products["gather   uint8 rows taken, then cast (the trainer's)"] = take_and_cast
    products["gather   float32 rows taken"] = lambda: np.take(
        floats, next(chunk_ids), axis=0, out=float_chunk, mode="clip"
    )
    for name, product in products.items():
        print(f"{name:52s} {best_us(lambda _, product=product: product(), rounds, 200):6.0f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("fixed-cost", "sparse", "layouts"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunks", type=int, default=120)
    p.add_argument("--cpu-class", choices=cpu_class.CLASSES, default="native")
    args = p.parse_args()
    env = cpu_class.class_env(args.cpu_class)
    env["OPENBLAS_NUM_THREADS"] = "1"
    if os.environ.get("MNISTLAB_LIMITS_CHILD") != "1":  # NumPy reads these only when it loads
        env["MNISTLAB_LIMITS_CHILD"] = "1"
        raise SystemExit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)
    print(f"{cpu_class.header(args.cpu_class)}; one thread")
    if args.what == "fixed-cost":
        fixed_cost(args.rounds)
    elif args.what == "sparse":
        sparse(args.rounds, args.chunks, args.cpu_class)
    else:
        layouts(args.rounds)


if __name__ == "__main__":
    main()
