"""CPU benchmark: data-parallel training over processes (DDP, gloo) against one process.

Seed recipe (RMSprop, batch 64), epoch time of:

* ``1 proc x 1 thread``   -- the reference;
* ``1 proc x 2 threads``  -- torch's own intra-op threads, batch not split;
* ``thread split``        -- the CPU lever that splits each batch across threads (levers.SplitBatch);
* ``2 procs x 1 thread``  -- ``mnistlab train cnn --nproc 2``'s path: torch's elastic launcher, DDP over gloo.

Each contender runs in fresh processes; rounds interleave the contenders (in a rotating order)
so that a neighbour's load hits them alike; the table shows medians over rounds of each run's
epochs after its first, and the ratio to the one-thread reference. The DDP worker also times its
collectives: the gradient all-reduce (one flat buffer of all parameters; DDP overlaps it with the
backward pass, so this is an upper bound of what it adds) and the per-step stop/NaN agreement.

    make bench-ddp                                   # 20,000 images, 3 epochs, 3 rounds
    python benchmarks/bench_ddp.py --train-size 60000 --epochs 2 --rounds 5
    python benchmarks/bench_ddp.py --cpu-class avx2  # every contender held to AVX2 (see cpu_class.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cpu_class  # benchmarks/ is on the path: this script's folder
import rounds

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")

CONTENDERS = {
    "1 proc x 1 thread": ("plain", 1),
    "1 proc x 2 threads": ("no-split", 2),
    "thread split": ("split", 2),
    "2 procs x 1 thread": ("ddp", 1),
}


# ----------------------------------------------------------------------------------------------
# Workers (one per contender and round; the DDP one on every rank)


def worker(args) -> int:
    sys.path.insert(0, SRC)
    import torch

    from mnistlab.cnn import Trainer, distributed, resolve_config
    from mnistlab.data import load_dataset

    ranks = distributed.current()
    dataset = distributed.local_main_first(lambda: load_dataset("mnist")).subset(args.train_size, 1000)
    config = resolve_config("seed", epochs=args.epochs, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, dataset, Path(tmp) / "run", progress=False)
        if args.mode == "no-split":  # the split lever has no off switch: turned off here, for the comparison
            trainer.levers.data_parallel = 1
            trainer.split = None
        result = trainer.run()
    record = {
        "epoch_s": [h["train_seconds"] for h in result.history],
        "epoch_cpu_s": [h["train_cpu_seconds"] for h in result.history],
        "test_acc": result.history[-1]["test_accuracy"],
        "steps": trainer.steps_per_epoch,
        "threads": trainer.levers.threads,
        "split": trainer.levers.data_parallel,
        "world": trainer.levers.world_size,
        "amp": trainer.levers.amp_dtype or "off",
    }
    if ranks.active:
        record.update(collective_costs(trainer, torch))
    if ranks.is_main:
        print("RESULT " + json.dumps(record), flush=True)
    distributed.leave()
    return 0


def collective_costs(trainer, torch) -> dict:
    import torch.distributed as dist

    params = sum(p.numel() for p in trainer.net.parameters())
    flat = torch.zeros(params)
    flags = torch.zeros(2)
    timings: dict[str, list[float]] = {"grad": [], "agree": []}
    for _ in range(20):
        dist.all_reduce(flat)
    for _ in range(200):
        for name, tensor in (("grad", flat), ("agree", flags)):
            t0 = time.perf_counter()
            dist.all_reduce(tensor)
            timings[name].append(time.perf_counter() - t0)
    return {"params": params, **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in timings.items()}}


# ----------------------------------------------------------------------------------------------
# The driver


def run_contender(name: str, args) -> dict:
    mode, threads = CONTENDERS[name]
    own = [__file__, "--worker", mode, "--threads", str(threads)]
    own += ["--epochs", str(args.epochs), "--train-size", str(args.train_size)]
    launcher = [sys.executable]
    if mode == "ddp":
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = cpu_class.class_env(args.cpu_class)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    result = rounds.run_worker([*launcher, *own], env=env, marker="RESULT ")
    if "error" in result:  # the report needs every contender
        raise SystemExit(f"{name} failed: {result['error']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (the first is not counted when > 1)"
    )
    rounds.add_common_options(parser, rounds=3, threads=None, threads_help="")
    parser.add_argument(
        "--worker", choices=("plain", "no-split", "split", "ddp"), dest="mode", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.mode:
        return worker(args)

    names = list(CONTENDERS)
    rounds.print_header(args.cpu_class, ["torch"])
    print(
        f"seed recipe, {args.train_size} images, {args.epochs} epoch(s) per run, {args.rounds} rounds",
        flush=True,
    )

    def describe(res: dict) -> tuple[str, float, str]:
        details = f"threads {res['threads']}, split {res['split']}, ranks {res['world']}, amp {res['amp']}"
        if "grad_ms" in res:
            details += f"; grad all-reduce {res['grad_ms']:.2f} ms, agree {res['agree_ms']:.3f} ms"
        return f"s/epoch {[round(s, 2) for s in res['epoch_s']]}", res["test_acc"], details

    runs = rounds.run_rounds(names, args.rounds, lambda name: run_contender(name, args), describe)
    medians = {name: rounds.epoch_median(runs[name], "epoch_s") for name in names}
    cpu = {name: rounds.epoch_median(runs[name], "epoch_cpu_s") for name in names}
    reference = medians[names[0]]
    print(
        f"\nMedians over rounds (the machine is shared: contenders interleaved; load average "
        f"{rounds.load_average():.1f} at the end). Epoch = {args.train_size} images; "
        "CPU time is rank 0's process."
    )
    print(f"{'contender':22s} {'wall s/epoch':>13s} {'vs 1 thread':>12s} {'CPU s/epoch':>12s}")
    for name in names:
        print(f"{name:22s} {medians[name]:13.2f} {medians[name] / reference:11.2f}x {cpu[name]:12.2f}")
    ddp = runs["2 procs x 1 thread"]
    steps = ddp[0]["steps"]
    grad = statistics.median(res["grad_ms"] for res in ddp)
    agree = statistics.median(res["agree_ms"] for res in ddp)
    step_ms = 1e3 * medians["2 procs x 1 thread"] / steps
    print(
        f"\nDDP collectives per step ({steps} steps/epoch, {ddp[0]['params']:,} parameters): "
        f"gradient all-reduce {grad:.2f} ms + stop/NaN agreement {agree:.3f} ms = {grad + agree:.2f} ms "
        f"of a {step_ms:.1f} ms step ({100 * (grad + agree) / step_ms:.0f}%; "
        "DDP overlaps the gradient all-reduce with the backward pass)"
    )
    goal = medians["2 procs x 1 thread"] / reference
    print(
        f"Goal 2 procs <= 0.65x one thread: {goal:.2f}x ({'met' if goal <= 0.65 else 'not met'}); "
        f"against the thread split: {medians['2 procs x 1 thread'] / medians['thread split']:.2f}x"
    )
    print(cpu_class.class_line(args.cpu_class))
    rounds.write_json(args.json, {"args": vars(args), "results": runs, "medians": medians, "cpu": cpu})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
