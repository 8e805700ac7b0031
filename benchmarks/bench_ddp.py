"""CPU benchmark: data-parallel training over processes (DDP, gloo) against one process.

Seed recipe (RMSprop, batch 64), epoch time of:

* ``1 proc x 1 thread``   -- the reference;
* ``1 proc x 2 threads``  -- torch's own intra-op threads, batch not split;
* ``thread split``        -- the CPU lever that splits each batch across threads (levers.SplitBatch);
* ``2 procs x 1 thread``  -- ``mnistlab train cnn --nproc 2``'s path: torch's elastic launcher, DDP over gloo.

Each contender runs in fresh processes; rounds interleave the contenders (in a rotating order)
so that a neighbour's load hits them alike; the table shows medians over rounds of each run's
epochs after its first (wall and CPU time), the median step from inside the training loop (the
time between the trainer's step callbacks, epochs after the first), and the ratios to the
one-thread reference. ``--lock FILE`` holds an flock on FILE for each round and lets it go between
rounds (a shared machine's timing lock). The DDP worker also times its
collective: the gradient all-reduce (one flat buffer of all parameters and the two stop/NaN flags
that ride along, distributed.StepAgreement; DDP overlaps it with the backward pass, so this is an
upper bound of what it adds).

    make bench-ddp                                   # 20,000 images, 3 epochs, 3 rounds
    python benchmarks/bench_ddp.py --rounds 5 --lock /work/wt/bench.lock
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
    step_ends: list[tuple[int, float, float]] = []  # (epoch, wall, process CPU) after each step

    def step_ended(trainer, _step) -> None:  # type: ignore[no-untyped-def]
        step_ends.append((trainer.epoch, time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, dataset, Path(tmp) / "run", progress=False, step_callback=step_ended)
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
        **step_times(step_ends),
    }
    if ranks.active:
        record.update(collective_costs(trainer, torch))
    if ranks.is_main:
        print("RESULT " + json.dumps(record), flush=True)
    distributed.leave()
    return 0


def step_times(step_ends: list[tuple[int, float, float]]) -> dict:
    """Median wall and process-CPU ms between consecutive steps of one epoch, epochs after the first
    (all when only one ran): the loop's own step, without the evaluation and saving between epochs."""
    later = [end for end in step_ends if end[0] > 0] or step_ends
    pairs = [(b[1] - a[1], b[2] - a[2]) for a, b in zip(later, later[1:]) if a[0] == b[0]]
    if not pairs:
        return {}
    return {
        "step_ms": 1e3 * statistics.median(p[0] for p in pairs),
        "step_cpu_ms": 1e3 * statistics.median(p[1] for p in pairs),
    }


def collective_costs(trainer, torch) -> dict:
    import torch.distributed as dist

    params = sum(p.numel() for p in trainer.net.parameters())
    flat = torch.zeros(params + 2)  # the gradients and the stop/NaN flags
    timings = []
    for _ in range(20):
        dist.all_reduce(flat)
    for _ in range(200):
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        timings.append(time.perf_counter() - t0)
    return {"params": params, "grad_ms": 1e3 * statistics.median(timings)}


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
    parser.add_argument("--lock", metavar="FILE", help="hold an flock on FILE during each round")
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
            details += f"; grad all-reduce {res['grad_ms']:.2f} ms"
        measured = f"s/epoch {[round(s, 2) for s in res['epoch_s']]}"
        if "step_ms" in res:
            measured += f", step {res['step_ms']:.1f} ms (CPU {res['step_cpu_ms']:.1f})"
        return measured, res["test_acc"], details

    runs = rounds.run_rounds(names, args.rounds, lambda name: run_contender(name, args), describe, args.lock)
    medians = {name: rounds.epoch_median(runs[name], "epoch_s") for name in names}
    cpu = {name: rounds.epoch_median(runs[name], "epoch_cpu_s") for name in names}
    steps_ms = {name: median_of(runs[name], "step_ms") for name in names}
    step_cpu = {name: median_of(runs[name], "step_cpu_ms") for name in names}
    reference, step_reference = medians[names[0]], steps_ms[names[0]]
    print(
        f"\nMedians over rounds (the machine is shared: contenders interleaved; load average "
        f"{rounds.load_average():.1f} at the end). Epoch = {args.train_size} images; "
        "CPU time is rank 0's process; a step is the loop's median step (epochs after the first)."
    )
    print(
        f"{'contender':22s} {'wall s/epoch':>13s} {'vs 1 thread':>12s} {'CPU s/epoch':>12s} "
        f"{'step ms':>8s} {'vs 1 thread':>12s} {'step CPU ms':>12s}"
    )
    for name in names:
        print(
            f"{name:22s} {medians[name]:13.2f} {medians[name] / reference:11.2f}x {cpu[name]:12.2f} "
            f"{steps_ms[name]:8.2f} {steps_ms[name] / step_reference:11.2f}x {step_cpu[name]:12.2f}"
        )
    ddp = runs["2 procs x 1 thread"]
    steps = ddp[0]["steps"]
    grad = statistics.median(res["grad_ms"] for res in ddp)
    step_ms = steps_ms["2 procs x 1 thread"]
    print(
        f"\nDDP's one collective per step ({steps} steps/epoch, {ddp[0]['params']:,} parameters): the "
        f"gradient all-reduce with the stop/NaN flags, {grad:.2f} ms alone (timed after training) "
        f"against a {step_ms:.1f} ms step ({100 * grad / step_ms:.0f}%)"
    )
    goal, goal_step = medians["2 procs x 1 thread"] / reference, step_ms / step_reference
    print(
        f"Goal 2 procs <= 0.65x one thread: epochs {goal:.2f}x, steps {goal_step:.2f}x "
        f"({'met' if max(goal, goal_step) <= 0.65 else 'not met'}); against the thread split: epochs "
        f"{medians['2 procs x 1 thread'] / medians['thread split']:.2f}x, steps "
        f"{step_ms / steps_ms['thread split']:.2f}x"
    )
    print(cpu_class.class_line(args.cpu_class))
    rounds.write_json(
        args.json, {"args": vars(args), "results": runs, "medians": medians, "cpu": cpu, "steps_ms": steps_ms}
    )
    return 0


def median_of(results: list[dict], key: str) -> float:
    """The median over the runs that measured ``key`` (nan: none did)."""
    values = [res[key] for res in results if key in res]
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    from mnistlab.cli import end_rank_process

    raise SystemExit(end_rank_process(main()))  # a rank's process ends without finalizing
