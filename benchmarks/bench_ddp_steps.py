"""CPU benchmark: where the time of a DDP step goes, 2 ranks x 1 thread, seed recipe at global batch 64.

One ``torchrun --nproc-per-node 2`` job takes these ways of running a step in turn, a block of
steps each, the order rotating from round to round, so that a neighbour's load and the VM's speed
hit them alike:

* ``1 thread x 64``: rank 0 alone, one process's step on the whole batch (rank 1 sleeps at a barrier);
* ``1 thread x 32``: rank 0 alone, a step on half the batch: the floor of a rank's work;
* ``2 x 32 apart``: both ranks a one-process 32-image step at once, no communication: what two
  busy cores give;
* ``2 x 32 + barrier``: the same and a barrier after every step: the rendezvous alone;
* ``2 x 32 + all-reduce``: the same and an all-reduce of one flat buffer the size of the gradients
  and the stop/NaN flags: the communication without DDP;
* ``DDP``: the step as ``mnistlab train cnn --nproc 2`` runs it (distributed.data_parallel and
  StepAgreement), and ``DDP <options>``: the same with DistributedDataParallel options changed.

All ways run the levers rank 0 chose for the DDP step (the same arithmetic). Per step: wall time,
the main thread's CPU time and the process's (gloo's threads included), medians over the rounds
after a warm-up round; ratios to ``1 thread x 64``.

    python benchmarks/bench_ddp_steps.py                              # 15 rounds of 20 steps
    python benchmarks/bench_ddp_steps.py --lock /work/wt/bench.lock --cpu-class avx2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
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
# name -> (images per step, ranks stepping, what follows each step, DistributedDataParallel options)
WAYS = {
    "1 thread x 64": (64, 1, "", None),
    "1 thread x 32": (32, 1, "", None),
    "2 x 32 apart": (32, 2, "", None),
    "2 x 32 + barrier": (32, 2, "barrier", None),
    "2 x 32 + all-reduce": (32, 2, "all-reduce", None),
    "DDP": (64, 2, "", {}),
    "DDP gradient_as_bucket_view": (64, 2, "", {"gradient_as_bucket_view": True}),
    "DDP static_graph": (64, 2, "", {"static_graph": True}),
    "DDP buckets of 0.1 MB": (64, 2, "", {"bucket_cap_mb": 0.1}),
}


@contextlib.contextmanager
def building(distributed, ddp_options: dict | None):  # type: ignore[no-untyped-def]
    """While a Trainer is built: one process outside any job (``None``), or a rank whose
    DistributedDataParallel gets ``ddp_options``."""
    saved = distributed.current, distributed.data_parallel
    if ddp_options is None:
        distributed.current = distributed.Ranks
    else:
        distributed.data_parallel = functools.partial(saved[1], **ddp_options)
    try:
        yield
    finally:
        distributed.current, distributed.data_parallel = saved


# ----------------------------------------------------------------------------------------------
# The worker: one rank of the job


def worker(args) -> int:
    sys.path.insert(0, SRC)
    import numpy as np
    import torch
    import torch.distributed as dist

    from mnistlab.cnn import Trainer, distributed, resolve_config
    from mnistlab.cnn.levers import process_settings
    from mnistlab.data import load_dataset

    ranks = distributed.current()
    dataset = distributed.local_main_first(lambda: load_dataset("mnist")).subset(args.train_size, 100)
    names = [name for name in args.ways.split(",") if name]
    tmp = tempfile.mkdtemp()
    trainers, levers = {}, None
    for name in sorted(names, key=lambda n: WAYS[n][3] is None):  # a DDP way first: rank 0 chooses
        batch, _, _, options = WAYS[name]
        config = resolve_config("seed", epochs=1, threads=1, batch_size=batch)
        with building(distributed, options):
            trainers[name] = Trainer(config, dataset, Path(tmp) / str(len(trainers)), progress=False,
                                     overwrite=True, recorded_levers=levers)
        levers = levers or dataclasses.asdict(trainers[name].levers)
    flat = torch.zeros(sum(p.numel() for p in trainers[names[0]].net.parameters()) + 2)
    order = torch.from_numpy(np.random.default_rng(0).permutation(args.train_size))
    clocks: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    with process_settings(trainers[names[0]].levers):
        for r in range(args.rounds + 1):  # round 0 warms every way up
            for name in rounds.rotated(names, r):
                batch, stepping, after, _ = WAYS[name]
                trainer = trainers[name]
                dist.barrier()
                if ranks.rank >= stepping:
                    continue
                for i in range(args.block):
                    start = (r * args.block + i) * batch % (args.train_size - batch)
                    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
                    trainer._train_step(order[start:start + batch], trainer._acc)  # as Trainer._run_epoch
                    float(trainer._acc[0])
                    if trainer.agreement is not None:
                        trainer.agreement.diverged()
                    if after == "barrier":
                        dist.barrier()
                    elif after == "all-reduce":
                        dist.all_reduce(flat)
                    if r:
                        clocks[name].append(
                            (time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0)
                        )
        dist.barrier()
    record = {}
    for name in names:
        medians = torch.tensor([1e3 * statistics.median(c[k] for c in clocks[name]) if clocks[name] else 0.0
                                for k in range(3)])
        dist.all_reduce(medians)  # the ranks that stepped: their mean of medians
        record[name] = (medians / WAYS[name][1]).tolist()
    if ranks.is_main:
        print("RESULT " + json.dumps({"ways": record, "levers": levers}), flush=True)
    distributed.leave()
    return 0


# ----------------------------------------------------------------------------------------------
# The driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=10000, help="images the steps draw from")
    parser.add_argument("--block", type=int, default=20, help="steps of one way before the next")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    parser.add_argument("--lock", metavar="FILE", help="hold an flock on FILE while the job runs")
    rounds.add_common_options(parser, rounds=15, threads=None, threads_help="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [name for name in args.ways.split(",") if name not in WAYS]
    if unknown:
        parser.error(f"unknown ways {unknown}; choose from: {', '.join(WAYS)}")
    if args.worker:
        return worker(args)

    rounds.print_header(args.cpu_class, ["torch"])
    print(f"seed recipe, global batch 64, 2 ranks x 1 thread; {args.rounds} rounds of {args.block} "
          "steps per way", flush=True)
    env = cpu_class.class_env(args.cpu_class)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, "--worker", "--ways", args.ways, "--rounds", str(args.rounds),
               "--block", str(args.block), "--train-size", str(args.train_size)]
    with rounds.timing_lock(args.lock):
        result = rounds.run_worker(command, env=env, marker="RESULT ", timeout=600)
    if "error" in result:
        raise SystemExit(f"the job failed: {result['error']}")
    ways = result["ways"]
    reference = ways[next(iter(ways))][0]
    print(f"\nMedians per step (load average {rounds.load_average():.1f} at the end; levers "
          f"{'bf16 autocast' if result['levers']['amp_dtype'] else 'float32'}, channels-last "
          f"{result['levers']['channels_last']}); ratios to the first way:")
    print(f"{'way':30s} {'wall ms':>8s} {'ratio':>7s} {'main-thread CPU ms':>19s} {'process CPU ms':>15s}")
    for name, (wall, thread_cpu, process_cpu) in ways.items():
        print(f"{name:30s} {wall:8.2f} {wall / reference:6.2f}x {thread_cpu:19.2f} {process_cpu:15.2f}")
    print(cpu_class.class_line(args.cpu_class))
    rounds.write_json(args.json, {"args": vars(args), "result": result})
    return 0


if __name__ == "__main__":
    from mnistlab.cli import end_rank_process

    raise SystemExit(end_rank_process(main()))  # a rank's process ends without finalizing
