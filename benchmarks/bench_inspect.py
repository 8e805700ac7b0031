"""Speed of looking inside: activations of every layer for the whole test set, and OIPs of a full layer.

Targets (issue 5), on CPU:

1. activations of every layer of the seed CNN for all 10,000 MNIST test images: well under 5 s;
2. optimal input patterns for all 128 maps of the seed-vi CNN's conv3, optimized together as one
   batch: under 10 s, each map's activation at least 10x its starting value, or a list of the
   maps that stay dead (and whether they are silent for every test image too).

For comparison, the seed's way, one map at a time, is timed on a few maps in the same process,
alternating with the batched run, and extrapolated to 128 maps.

    python benchmarks/bench_inspect.py                          # trains quick seed and seed-vi runs first
    python benchmarks/bench_inspect.py --seed-run runs/seed --vi-run runs/seed-vi
    python benchmarks/bench_inspect.py --cpu-class avx2          # held to AVX2 (see cpu_class.py)

Target 2 is also timed as the whole command a user runs (``mnistlab oip RUN --layer conv3``: a fresh
interpreter, imports, loading the run, the OIPs, the gallery PNG and the .npz), alternating with
the in-process timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package
import rounds

_HELD = "MNISTLAB_BENCH_CPU_CLASS"  # set when this script re-ran itself in a class's environment


def quick_run(spec: str, out: Path, epochs: int, train_size: int | None) -> Path:
    """A CNN trained briefly on MNIST (the preset's recipe, fewer epochs), reused when already there."""
    from mnistlab.cnn import train
    from mnistlab.data import load_dataset

    if (out / "run.json").exists():
        return out
    ds = load_dataset("mnist", progress=False)
    if train_size:
        ds = ds.subset(n_train=train_size)
    t0 = time.perf_counter()
    train(ds, out=out, spec=spec, epochs=epochs, progress=False, overwrite=True, device="cpu")
    print(
        f"trained {spec} for {epochs} epoch(s) in {time.perf_counter() - t0:.0f} s -> {out}", file=sys.stderr
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-run", type=Path, help="a seed CNN run (default: train one, cached in --work)")
    parser.add_argument(
        "--vi-run", type=Path, help="a seed-vi CNN run (default: train one, cached in --work)"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("runs/bench-inspect"), help="where quick runs are kept"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs for the quick runs (default 1)")
    parser.add_argument(
        "--train-size", type=int, default=None, help="train the quick runs on the first N images"
    )
    parser.add_argument("--steps", type=int, default=70, help="OIP steps (default 70, the command's)")
    parser.add_argument(
        "--single", type=int, default=4, help="maps optimized one at a time for the comparison (0: skip)"
    )
    rounds.add_common_options(
        parser, rounds=3, rounds_aliases=("--repeats",), threads=0,
        threads_help="torch CPU threads (0: torch's default, all cores)", held="torch and oneDNN",
        rounds_help="rounds; each times every way once, in turn",
    )
    args = parser.parse_args(argv)
    if (
        os.environ.get(_HELD) != args.cpu_class
    ):  # the variables act only when torch loads: run again with them
        env = cpu_class.class_env(args.cpu_class)
        env[_HELD] = args.cpu_class
        return subprocess.run(
            [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)],
            env=env,
            check=False,
        ).returncode

    import torch

    from mnistlab.data import load_dataset
    from mnistlab.inspect import compute_activations, optimize_inputs
    from mnistlab.models import load_model

    seed_run = args.seed_run or quick_run("seed", args.work / "seed", args.epochs, args.train_size)
    vi_run = args.vi_run or quick_run("seed-vi", args.work / "seed-vi", args.epochs, args.train_size)
    ds = load_dataset("mnist", progress=False)
    images = ds.test_images
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, object] = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_class": args.cpu_class,
        "cpu": cpu_class.cpu_model(),
    }
    load = rounds.load_average()
    rounds.print_header(args.cpu_class, ["torch"])
    print(
        f"load average {load:.1f} at the start (the machine may be shared: other processes slow every "
        f"number), torch {torch.__version__}, {torch.get_num_threads()} threads (OIP: the batch split "
        "across them, one each); "
        f"medians of {args.rounds}"
    )
    report["load_start"] = load

    # 1. Activations of every layer, whole test set.
    model = load_model(seed_run)
    compute_activations(model, images[:500])  # warm-up
    times, out_times = [], []
    for _ in range(args.rounds):  # alternate with the output alone: the same passes, no 1.4 GB kept
        t0 = time.perf_counter()
        acts = compute_activations(model, images)
        times.append(time.perf_counter() - t0)
        mb = sum(a.nbytes for a in acts.values()) / 2**20  # outside the timing, before the 1.4 GB are let go
        acc = float(np.mean(acts["output"].argmax(1) == ds.test_labels))
        del acts
        t0 = time.perf_counter()
        compute_activations(model, images, ["output"])
        out_times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"\n[activations] seed CNN ({seed_run}, test accuracy {acc:.4f}), {len(images)} images, every "
        f"layer ({', '.join(model.layer_names())}; {mb:.0f} MiB): median {med:.2f} s  (runs: "
        f"{', '.join(f'{t:.2f}' for t in times)})  target < 5 s: {'PASS' if med < 5 else 'FAIL'}"
    )
    print(
        "      the output layer alone (the same forward passes, nothing kept): median "
        f"{statistics.median(out_times):.2f} s"
    )
    report["activations_s"] = med
    report["output_only_s"] = statistics.median(out_times)
    report["activations_runs_s"] = times

    # 2. OIPs of all 128 maps of seed-vi conv3, one batch; the seed's one-map-at-a-time for comparison.
    vi = load_model(vi_run)
    optimize_inputs(vi, "conv3", [0, 1], steps=2)  # warm-up
    batch_times, batch_cpu, command_times, single_times, result = [], [], [], [], None
    command = [
        sys.executable,
        "-m",
        "mnistlab",
        "oip",
        str(vi_run),
        "--layer",
        "conv3",
        "--steps",
        str(args.steps),
    ]
    if args.threads:
        code = (
            f"import sys, torch; torch.set_num_threads({args.threads}); "
            "from mnistlab.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        command = [sys.executable, "-c", code, *command[3:]]
    for _ in range(args.rounds):  # alternate the ways so machine noise hits them alike
        t0, c0 = time.perf_counter(), time.process_time()
        result = optimize_inputs(vi, "conv3", steps=args.steps, seed=0)
        batch_times.append(time.perf_counter() - t0)
        batch_cpu.append(time.process_time() - c0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run(command + ["--out", os.path.join(tmp, "oip.png")], check=True, capture_output=True)
            command_times.append(time.perf_counter() - t0)
        if args.single:
            t0 = time.perf_counter()
            for unit in range(args.single):
                optimize_inputs(vi, "conv3", [unit], steps=args.steps, seed=0)
            single_times.append((time.perf_counter() - t0) / args.single)
    med = statistics.median(batch_times)
    reached, dead = result.reached(10), result.dead
    silent_on_data = compute_activations(vi, images, ["conv3"])["conv3"].max(axis=(0, 2, 3)) <= 0
    dead_units = [int(u) for u in result.units[dead]]
    dead_everywhere = [u for u in dead_units if silent_on_data[u]]
    below = [
        (int(u), float(g))
        for u, g, r, d in zip(result.units, result.gain(), reached, dead)
        if not r and not d
    ]
    whole = statistics.median(command_times)
    ok = whole < 10 and not below
    print(
        f"\n[oip] seed-vi conv3 ({vi_run}), {args.cpu_class} ({cpu_class.hardware_isa()} CPU"
        f"{', held to AVX2' if args.cpu_class == 'avx2' else ''}): 128 maps as one batch, {args.steps} steps"
    )
    print(
        f"      whole command ({' '.join(command[1:4])} ...): median {whole:.2f} s "
        f"(runs: {', '.join(f'{t:.2f}' for t in command_times)})  "
        f"target < 10 s: {'PASS' if whole < 10 else 'FAIL'}"
    )
    print(
        f"      optimize_inputs alone: median {med:.2f} s wall, {statistics.median(batch_cpu):.2f} s CPU "
        f"(runs: {', '.join(f'{t:.2f}' for t in batch_times)})"
    )
    print(
        f"      {int(reached.sum())} maps reached >= 10x their start (median gain "
        f"{np.nanmedian(result.gain()[reached]):.0f}x); {len(dead_units)} dead: {dead_units}"
    )
    print(
        f"      of the dead, silent for all 10,000 test images too: {len(dead_everywhere)} {dead_everywhere}"
    )
    if below:
        print("      below 10x: " + ", ".join(f"{u} ({g:.1f}x)" for u, g in below))
    print(f"      every map >= 10x or dead: {'PASS' if not below else 'FAIL'}")
    if single_times:
        per_map = statistics.median(single_times)
        print(
            f"      one map at a time (the seed's way): {per_map:.2f} s per map, {128 * per_map:.1f} s for "
            f"128 (extrapolated from {args.single}); the batch is {128 * per_map / med:.0f}x faster"
        )
        report["oip_single_per_map_s"] = per_map
    report.update(
        {
            "oip_command_s": whole,
            "oip_command_runs_s": command_times,
            "oip_batch_cpu_s": batch_cpu,
            "oip_batch_s": med,
            "oip_batch_runs_s": batch_times,
            "oip_reached_10x": int(reached.sum()),
            "oip_dead": dead_units,
            "oip_dead_on_data_too": dead_everywhere,
            "oip_below_10x": below,
            "oip_pass": ok,
        }
    )
    report["load_end"] = rounds.load_average()
    print(f"\nload average at the end: {report['load_end']:.1f}")
    rounds.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
