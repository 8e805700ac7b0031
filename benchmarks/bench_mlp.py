"""Benchmark: 35 epochs of the NumPy MLP against PyTorch, Keras/TensorFlow and scikit-learn.

    make bench-mlp                       # builds .venv-bench, runs everything (several minutes)
    .venv-bench/bin/python benchmarks/bench_mlp.py --rounds 3 --threads 2
    .venv-bench/bin/python benchmarks/bench_mlp.py --cpu-class avx2      # every engine held to AVX2
    # mnistlab's default thread choice against PyTorch with 2 threads, each round after a busy minute:
    .venv-bench/bin/python benchmarks/bench_mlp.py --engines mnistlab,torch --configs default --batches 500 \
        --threads 2 --mnistlab-threads auto --busy-first 60 --rounds 5

Every training runs in its own process (a fresh interpreter, nothing shared or warmed), the
engines alternate within each round (the order rotates every round), and each configuration is
run ``--rounds`` times; the table shows medians. What is timed is the training call alone: data
loading and preprocessing happen before the clock starts (mnistlab: it preprocesses the raw
training and test images chunk by chunk inside its timed loop), all engines get the same float32
inputs, the same initial weights (scikit-learn: its own init), the same hyperparameters and the
same thread count. Every engine measures the test accuracy after each epoch and keeps a running
training loss and accuracy, as mnistlab's history does (scikit-learn: loss only, test accuracy at
the end). Where a library lacks an option, the nearest one is used and the table's note column
says so. The engines' code is in mlp_contenders.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package
import mlp_contenders
import rounds

ENGINES = ("mnistlab", "torch", "keras", "sklearn")
CONFIGS = ("default", "seed")


def training_flops(cfg, n_train=60000, n_test=10000, layout=None) -> float:
    """Multiply-adds x 2 of the matrix products of one training: forward, weight gradients, the
    input gradients of every layer but the first, and the per-epoch test forward pass.

    Without ``layout``, nominal: every product over all inputs. With the trainer's ``layout``, the
    products mnistlab executes: first-layer products over each image's columns up to its last ink,
    as the staircase's groups round them (blank columns skipped)."""
    sizes = cfg.sizes
    first = sizes[0] * sizes[1]
    train_first = test_first = first
    if layout:
        train_first = sizes[1] * layout["columns_per_image"]
        test_first = sizes[1] * layout.get("test_columns_per_image", sizes[0])
    deeper = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    per_epoch = 2 * (n_train * (2 * (train_first + deeper) + deeper) + n_test * (test_first + deeper))
    return cfg.epochs * per_epoch


def _env(threads: int | str, cls: str) -> dict[str, str]:
    env = cpu_class.class_env(cls)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads == "auto":  # as a user's shell has it: no limit, the library decides
            env.pop(var, None)
        else:
            env[var] = str(threads)
    # These slow a current OpenBLAS (see the machine notes); the benchmark runs without them and
    # reports the kernel it got.
    if cls == "native":
        env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _spawn(argv: list[str], threads: int | str, timeout: float, cls: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--threads", str(threads)]
    return rounds.run_worker(command, env=_env(threads, cls), timeout=timeout)


def driver(args) -> int:
    engines = [e for e in args.engines.split(",") if e]
    configs = [c for c in args.configs.split(",") if c]
    batches = [int(b) for b in args.batches.split(",") if b]
    threads = args.threads
    ours_threads = args.mnistlab_threads or threads
    load = rounds.load_average()
    rounds.print_header(args.cpu_class, ["numpy", *(k for k in ("torch", "keras") if k in engines)])
    print(
        f"bench-mlp: {args.rounds} runs x engines {', '.join(engines)}, {args.epochs} epochs, "
        f"{threads} thread(s) "
        f"(mnistlab: {ours_threads}), cpu count {os.cpu_count()}, load average {load:.1f} at the start; "
        "the machine may be shared",
        flush=True,
    )
    peaks = []
    results: dict[tuple, list[dict]] = {}
    blas = ""
    started = time.time()
    for r in range(args.rounds):
        peak = _spawn(["--worker", "peak"], threads, 300, args.cpu_class)
        if "gflops" in peak:
            peaks.append(peak["gflops"])
            blas = peak["blas"]
        for config in configs:
            for batch in batches:
                if args.busy_first:
                    busy(args.busy_first)
                for engine in rounds.rotated(engines, r):
                    load = rounds.load_average()
                    own = ["--worker", engine, "--config", config, "--batch", str(batch)]
                    res = _spawn(
                        [*own, "--epochs", str(args.epochs)],
                        ours_threads if engine == "mnistlab" else threads,
                        args.timeout,
                        args.cpu_class,
                    )
                    results.setdefault((config, batch, engine), []).append(res)
                    shown = (
                        f"{res['seconds']:.2f} s, acc {res['test_accuracy']:.4f}"
                        if "seconds" in res
                        else res["error"]
                    )
                    print(
                        f"  run {r + 1} {config:8s} batch {batch:6d} {engine:9s} {shown}  "
                        f"(load average {load:.1f} "
                        f"at its start; {res.get('threads_used', '')})",
                        flush=True,
                    )
    print(f"(finished in {time.time() - started:.0f} s)\n")
    print(
        f"{cpu_class.class_line(args.cpu_class)}; threads: {threads} for every engine, "
        f"mnistlab {ours_threads}"
        + (f"; every round after {args.busy_first:.0f} s of all cores busy" if args.busy_first else "")
    )
    print(report(results, configs, batches, engines, peaks, blas, args.epochs, threads))
    rows = {" ".join(map(str, key)): runs for key, runs in results.items()}
    rounds.write_json(args.json, {"args": vars(args), "gemm_peaks": peaks, "blas": blas, "results": rows})
    return 0


def busy(seconds: float) -> None:
    """Keep every core busy for ``seconds`` (other work just before a training: the load average rises)."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]
    for proc in procs:
        proc.wait()


def report(results, configs, batches, engines, peaks, blas, epochs, threads) -> str:
    from mnistlab.mlp.layout import describe_layout

    peak = max(peaks) if peaks else float("nan")
    lines = [
        f"float32 GEMM peak (NumPy, {threads} thread(s), 3072^3): {peak:.0f} GFLOP/s; BLAS: {blas}",
        "",
        "| config | batch | engine | median s | runs (s) | mnistlab / engine | median CPU s | mnistlab / "
        "engine (CPU) | test acc | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = []
    for config in configs:
        for batch in batches:
            ours = _median(results.get((config, batch, "mnistlab"), []))
            ours_cpu = _median(results.get((config, batch, "mnistlab"), []), "cpu")
            for engine in engines:
                runs = results.get((config, batch, engine), [])
                ok = [r for r in runs if "seconds" in r]
                note = next((r.get("note", "") for r in ok if r.get("note")), "")
                errs = [r["error"] for r in runs if "error" in r]
                if errs:
                    note = (note + "; " if note else "") + f"failed: {errs[0][:80]}"
                if not ok:
                    lines.append(f"| {config} | {batch} | {engine} | - | - | - | - | - | - | {note} |")
                    continue
                med, cpu = _median(ok), _median(ok, "cpu")
                acc = statistics.median(r["test_accuracy"] for r in ok)
                mine = engine == "mnistlab"
                ratio = "-" if mine else (f"{ours / med:.2f}x" if ours else "n/a")
                ratio_cpu = "-" if mine else (f"{ours_cpu / cpu:.2f}x" if ours_cpu else "n/a")
                times = ", ".join(f"{r['seconds']:.2f}" for r in ok)
                lines.append(
                    f"| {config} | {batch} | {engine} | {med:.2f} | {times} | {ratio} | {cpu:.2f} | "
                    f"{ratio_cpu} | {100 * acc:.2f}% | {note} |"
                )
            if ours:
                cfg = mlp_contenders.config(config, batch, epochs)
                nominal = training_flops(cfg)
                layout = next(
                    (r["layout"] for r in results.get((config, batch, "mnistlab"), []) if r.get("layout")),
                    None,
                )
                executed = training_flops(cfg, layout=layout)
                summaries.append(
                    f"mnistlab {config} batch {batch}: {nominal / 1e9:.0f} GFLOP of matrix products over "
                    f"all 784 inputs, {executed / 1e9:.0f} GFLOP executed "
                    f"({describe_layout(layout or {})}); {executed / ours / 1e9:.0f} GFLOP/s executed in "
                    f"{ours:.2f} s wall = {100 * executed / ours / 1e9 / peak:.0f}% of the GEMM peak "
                    f"({executed / ours_cpu / 1e9:.0f} GFLOP/s per CPU second); nominal rate "
                    f"{nominal / ours / 1e9:.0f} GFLOP/s"
                )
    return "\n".join(lines + [""] + summaries)


def _median(runs: list[dict], key: str = "seconds") -> float | None:
    ok = [r[key] for r in runs if key in r]
    return statistics.median(ok) if ok else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=35)
    rounds.add_common_options(
        p, rounds=3, threads=str(os.cpu_count() or 1), threads_type=str, held="every engine",
        threads_help="threads for every engine (default: all cores)",
    )
    p.add_argument(
        "--mnistlab-threads", help="mnistlab's --threads, if not the others' (auto: its default choice)"
    )
    p.add_argument(
        "--busy-first", type=float, default=0, help="keep all cores busy this many seconds before each round"
    )
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--batches", default="500,20000")
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds per training before it counts as failed"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        mlp_contenders.worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
