"""GPU check of the distributed path: ``mnistlab train cnn --nproc 1`` (DDP over NCCL, one rank)
against the plain GPU path, seed recipe, on the GPU it finds.

Contenders (each a fresh ``mnistlab`` process, interleaved over rounds):

* ``plain``            -- the one-process path with its CUDA graph;
* ``plain, no graph``  -- the same without the CUDA graph (DDP's gradient hooks rule the graph out,
  so this isolates what DDP itself costs);
* ``--nproc 1 (NCCL)`` -- torch's elastic launcher, one rank, DDP with NCCL for CUDA tensors.

It prints s/epoch (median of the epochs after the first), test accuracy, and the ratios.
Data: MNIST from mnistlab's cache; the device machine has no network, so first, here::

    python benchmarks/bench_cnn_gpu.py --export-data     # copies the cache to .gpu-data/ (untracked)
    python benchmarks/bench_ddp_gpu.py                   # on the GPU machine
    python benchmarks/bench_ddp_gpu.py --smoke           # a tiny dry run on the CPU (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_HOME = ROOT / ".gpu-data"


def cli() -> int:
    """A contender: mnistlab's CLI, on the first $BENCH_TRAIN_SIZE training images when that is set
    (``--nproc`` starts this script again on every rank, so each rank sees the same subset)."""
    import mnistlab.data
    from mnistlab.cli import main

    size = os.environ.get("BENCH_TRAIN_SIZE")
    if size:
        load = mnistlab.data.load_dataset
        mnistlab.data.load_dataset = lambda name, **kw: load(name, **kw).subset(int(size), 1000)
    return main()


def run(options: list[str], out: Path, env: dict[str, str]) -> dict:
    command = [
        sys.executable,
        __file__,
        "train",
        "cnn",
        "--spec",
        "seed",
        "--out",
        str(out),
        "--no-progress",
        *options,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    history = json.loads((out / "history.json").read_text())
    levers = json.loads((out / "run.json").read_text())["levers"]
    times = [h["train_seconds"] for h in history]
    return {
        "epoch_s": statistics.median(times[1:] if len(times) > 1 else times),
        "wall_s": time.perf_counter() - t0,
        "test_acc": history[-1]["test_accuracy"],
        "levers": levers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, 1 epoch, 1 round (checks the script, not speed)"
    )
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if DATA_HOME.is_dir() and "MNISTLAB_HOME" not in env:
        env["MNISTLAB_HOME"] = str(DATA_HOME)
    device = ["--device", "cpu", "--threads", "1"] if args.smoke else ["--device", "cuda"]
    if args.smoke:
        env["BENCH_TRAIN_SIZE"] = "2048"
    epochs, rounds = (1, 1) if args.smoke else (args.epochs, args.rounds)
    base = [*device, "--epochs", str(epochs)]
    contenders = {
        "plain": base,
        "plain, no graph": [*base, "--cuda-graphs", "off"],
        "--nproc 1 (NCCL)": [*base, "--nproc", "1"],
    }
    if args.smoke:
        del contenders["plain, no graph"]
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"{gpu}; torch {torch.__version__}; seed recipe, {epochs} epoch(s), {rounds} round(s)", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for k, (name, options) in enumerate(contenders.items()):
                res = run(options, Path(tmp) / f"r{r}-{k}", env)
                results[name].append(res)
                if "error" in res:
                    print(f"  round {r + 1} {name:18s} FAILED: {res['error']}", flush=True)
                    continue
                lv = res["levers"]
                print(
                    f"  round {r + 1} {name:18s} {res['epoch_s']:.2f} s/epoch, "
                    f"test acc {100 * res['test_acc']:.2f}% (ranks {lv.get('world_size', 1)}, "
                    f"amp {lv['amp_dtype'] or 'off'}, graphs {lv['cuda_graphs']}, "
                    f"wall {res['wall_s']:.0f} s)",
                    flush=True,
                )
    medians = {
        name: statistics.median(r["epoch_s"] for r in runs if "epoch_s" in r)
        for name, runs in results.items()
        if any("epoch_s" in r for r in runs)
    }
    if "plain" in medians:
        print("\nmedian s/epoch (ratio to plain):")
        for name, value in medians.items():
            print(f"  {name:18s} {value:7.2f}  {value / medians['plain']:.2f}x")
    return 0 if all("error" not in r for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(cli() if sys.argv[1:2] == ["train"] else main())
