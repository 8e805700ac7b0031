"""Benchmark: the NumPy MLP's thread settings side by side, interleaved, each in its own process.

Contenders (default 35 epochs of the default network at batch 500):

* ``1``: one thread.
* ``split``: two threads through ``RowSplit`` (the first layer's products cut by output rows, each
  BLAS call on one thread), always on (no timed choice).
* ``auto``: the default ``--threads auto`` (the split, switched off where ``ThreadChoice`` measures
  one thread faster).
* ``openblas2``: the old two-thread path, OpenBLAS's own two threads and no split.

Each prints wall and CPU seconds of the training call and a hash of the trained weights: every
contender except ``openblas2`` must give the same hash (the split never changes the arithmetic).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_mlp_threads.py --cpu-class avx2 --rounds 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import cpu_class
import rounds

CONTENDERS = ("1", "split", "auto", "openblas2")
MARKER = "RESULT "


def work(name: str, epochs: int, batch: int) -> dict:
    import numpy as np

    from mnistlab.data import Preprocessor, load_dataset
    from mnistlab.mlp import MLP, Trainer, preset

    cfg = preset("default", epochs=epochs, batch_size=batch)
    ds = load_dataset("mnist", progress=False)
    model = MLP(cfg, preprocess=Preprocessor.fit(cfg.preprocess, ds.train_images))
    threads = {"1": 1, "split": 2, "auto": "auto", "openblas2": None}[name]
    trainer = Trainer(model, adapt_threads=name == "auto")
    test = (ds.test_images, ds.test_labels.astype(np.int64))
    wall, cpu = time.perf_counter(), time.process_time()
    history = trainer.fit(ds.train_images, ds.train_labels.astype(np.int64), test=test, threads=threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    log = trainer.thread_choice.log if trainer.thread_choice else []
    return {
        "seconds": wall,
        "cpu": cpu,
        "test_accuracy": history[-1]["test_accuracy"],
        "weights": hashlib.sha256(model.params.tobytes()).hexdigest()[:16],
        "choices": [(epoch + 1, chosen) for epoch, chosen, _, _ in log],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rounds.add_common_options(p, rounds=4, threads=None, threads_help="")
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(MARKER + json.dumps(work(args.worker, args.epochs, args.batch)), flush=True)
        return 0
    names = [c for c in args.contenders.split(",") if c]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        p.error(f"unknown contenders {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    rounds.print_header(args.cpu_class, ["numpy"])
    print(f"bench-mlp-threads: {args.rounds} rounds, {args.epochs} epochs at batch {args.batch}", flush=True)
    env = cpu_class.class_env(args.cpu_class)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "2"  # openblas2 keeps the BLAS default; the others set their own limit
    here = str(Path(__file__).resolve())

    def run(name: str) -> dict:
        command = [sys.executable, here, "--worker", name, "--epochs", str(args.epochs)]
        command += ["--batch", str(args.batch)]
        result = rounds.run_worker(command, env=env, timeout=1800, marker=MARKER)
        result["load"] = rounds.load_average()
        return result

    def describe(res: dict) -> tuple[str, float, str]:
        said = f"{res['seconds']:6.2f} s wall {res['cpu']:6.2f} s CPU"
        details = f"weights {res['weights']}, choices {res['choices']}, load {res['load']:.1f}"
        return said, res["test_accuracy"], details

    results = rounds.run_rounds(names, args.rounds, run, describe)
    print(f"\n{cpu_class.class_line(args.cpu_class)}; medians (min-max) over the rounds:")
    base = [r["seconds"] for r in results.get("1", []) if "error" not in r]
    for name in names:
        ok = [r for r in results[name] if "error" not in r]
        if not ok:
            print(f"  {name:9s} every run failed")
            continue
        wall = [r["seconds"] for r in ok]
        cpu = [r["cpu"] for r in ok]
        ratio = statistics.median(wall) / statistics.median(base) if base else float("nan")
        print(
            f"  {name:9s} wall {statistics.median(wall):6.2f} s ({min(wall):.2f}-{max(wall):.2f}), CPU "
            f"{statistics.median(cpu):6.2f} s ({min(cpu):.2f}-{max(cpu):.2f}), {ratio:.2f}x one thread's "
            f"wall; "
            f"weights {', '.join(sorted({r['weights'] for r in ok}))}"
        )
    rounds.write_json(args.json, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
