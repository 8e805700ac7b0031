"""CPU benchmark: where a split batch's step goes (levers.SplitBatch), per step and per part.

The seed recipe with its batch split into 2 parts of 32 images (bf16 autocast + channels-last on
a CPU with native bf16). Each step runs one of these ways, taken in turn step by step in one
process, so that a neighbour's load and the VM's speed hit them alike:

* ``together``: the parts on two threads at once (the split as it runs on idle cores);
* ``apart``: the same parts one after another on the calling thread (the same arithmetic);
* ``whole``: the batch not split, one thread (another arithmetic: the reference for the cost).

For every step: wall and process CPU time; for every part: its thread's CPU time, its wait on a
run queue (``/proc/.../schedstat``: runnable but not running), and the core it ended on; and over
the run, the CPU time other processes took (``/proc/stat``), the load this measurement sat in.

    python benchmarks/bench_split_steps.py --steps 300
    python benchmarks/bench_split_steps.py --ways together,whole --steps 600
    python benchmarks/bench_split_steps.py --steps 30 --choice-blocks 20   # also: PartsTogether's blocks

``--choice-blocks N`` then runs N blocks of ``--block-steps`` steps, alternating between the parts
always together and ``levers.PartsTogether`` choosing (its first trial brought forward), and
prints the mean step of each block and the ratio of neighbouring blocks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import rounds  # benchmarks/ is not a package: run as a script, its folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WAYS = ("together", "apart", "whole")


def thread_state() -> dict[str, float]:
    """This thread's clocks: wall, CPU, run-queue wait (ms) and the core it is on."""
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/schedstat") as fh:
        wait_ns = int(fh.read().split()[1])
    with open(f"/proc/self/task/{tid}/stat") as fh:
        core = int(fh.read().rsplit(")", 1)[1].split()[36])
    return {"wall": 1e3 * time.perf_counter(), "cpu": 1e3 * time.thread_time(), "wait": wait_ns / 1e6,
            "core": core}


def busy_seconds() -> float:
    """CPU seconds all processes have used since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values[:3]) + sum(values[4:7])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    low, high = ordered[len(ordered) // 10], ordered[(9 * len(ordered)) // 10]
    return f"{statistics.median(values):6.2f} [{low:6.2f}, {high:6.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="measured steps (after 10 warm-up steps)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"taken in turn, from: {', '.join(WAYS)}")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--choice-blocks", type=int, default=0, help="blocks against PartsTogether")
    parser.add_argument("--block-steps", type=int, default=60)
    args = parser.parse_args()
    ways = args.ways.split(",")
    if not set(ways) <= set(WAYS):
        parser.error(f"--ways: choose from {', '.join(WAYS)}")

    import numpy as np
    import torch

    from mnistlab.cnn import Trainer, resolve_config
    from mnistlab.cnn.levers import SplitBatch, process_settings
    from mnistlab.data import load_dataset

    dataset = load_dataset("mnist").subset(args.train_size, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config("seed", epochs=1, threads=2)
        trainer = Trainer(config, dataset, Path(tmp) / "run", progress=False)
    split = trainer.split
    if split is None:
        raise SystemExit("the seed recipe's batch is not split here (fewer than 2 cores?)")
    split.choice = None  # each step runs the way this benchmark says, not the way PartsTogether would choose
    parts: list[tuple[bool, dict, dict]] = []
    measure_part = trainer._part_gradients

    def part(x, y, batch):  # type: ignore[no-untyped-def]
        before = thread_state()
        result = measure_part(x, y, batch)
        parts.append((threading.current_thread() is threading.main_thread(), before, thread_state()))
        return result

    trainer._part_gradients = part
    order = torch.from_numpy(np.random.default_rng(0).permutation(trainer.n_train))
    rows: list[dict] = []
    with process_settings(trainer.levers):
        for step in range(args.steps + 10):
            way = ways[step % len(ways)]
            trainer.split = None if way == "whole" else split
            split.concurrent = way == "together"
            start = (step * 64) % (trainer.n_train - 64)
            first = len(parts)
            if step == 10:
                busy0, mine0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
            t0, c0 = time.perf_counter(), time.process_time()
            trainer._train_step(order[start : start + 64], trainer._acc)
            float(trainer._acc[0])
            if step >= 10:
                rows.append({"way": way, "wall": 1e3 * (time.perf_counter() - t0),
                             "cpu": 1e3 * (time.process_time() - c0), "parts": parts[first:]})
        others = (busy_seconds() - busy0 - (time.process_time() - mine0)) / (time.perf_counter() - wall0)
        split.concurrent, trainer.split = True, split
        chosen = SplitBatch(split.parts, 2)
        chosen.choice.until_trial = 8  # its first trial early, as a run reaches it after a few hundred steps
        blocks: dict[str, list[float]] = {"always together": [], "PartsTogether": []}
        for block in range(args.choice_blocks):
            for name in sorted(blocks, reverse=block % 2 == 1):
                trainer.split = split if name == "always together" else chosen
                t0 = time.perf_counter()
                for step in range(args.block_steps):
                    start = ((block * args.block_steps + step) * 64) % (trainer.n_train - 64)
                    trainer._train_step(order[start : start + 64], trainer._acc)
                    float(trainer._acc[0])
                blocks[name].append(1e3 * (time.perf_counter() - t0) / args.block_steps)
    split.close()
    chosen.close()

    print(f"seed recipe, batch 64 (parts of 32), levers: amp {trainer.levers.amp_dtype}, channels-last "
          f"{trainer.levers.channels_last}; {args.steps} steps taken in turn {ways}; other processes took "
          f"{others:.2f} cores meanwhile (load average {rounds.load_average():.1f})")
    print("ms per step: median [10th, 90th percentile]")
    for way in ways:
        mine = [r for r in rows if r["way"] == way]
        walls, cpus = [r["wall"] for r in mine], [r["cpu"] for r in mine]
        print(f"{way:9s} step wall {spread(walls)}  process CPU {spread(cpus)}")
        for main_thread, name in ((True, "calling thread"), (False, "part thread")):
            done = [(b, e) for r in mine for m, b, e in r["parts"] if m == main_thread]
            if done:
                print(f"    part on {name:14s} wall {spread([e['wall'] - b['wall'] for b, e in done])}  CPU "
                      f"{spread([e['cpu'] - b['cpu'] for b, e in done])}  run-queue wait "
                      f"{spread([e['wait'] - b['wait'] for b, e in done])}")
        if way == "together":
            shared = sum(1 for r in mine if len({e["core"] for _, _, e in r["parts"]}) == 1)
            print(f"    both parts ended on one core in {shared} of {len(mine)} steps")
    if args.choice_blocks:
        print(f"{args.choice_blocks} blocks of {args.block_steps} steps each way, in turn (ms per step):")
        for name, means in blocks.items():
            listed = " ".join(f"{m:.1f}" for m in means)
            print(f"{name:16s} median {statistics.median(means):6.2f}  {listed}")
        ratios = [b / a for a, b in zip(blocks["always together"], blocks["PartsTogether"])]
        choice = chosen.choice
        print(f"PartsTogether / always together, per pair of blocks: median {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]; its steps together {choice.steps[True]}, one after "
              f"another {choice.steps[False]}, switches {choice.switches} "
              f"(load average {rounds.load_average():.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
