"""Per-step CPU time of the seed recipe's training step under each set of float32 CPU levers,
interleaved in one process: what each lever is worth, steadier than whole epochs on a shared machine.

Every variant runs the Trainer's own step (forward, backward, RMSprop) on the same batches; rounds
alternate the variants, and the report gives each one's median CPU time per step (the process's,
all threads) and its ratio to the plain network (oneDNN's convolutions, every pooled row computed).

    .venv-bench/bin/python benchmarks/bench_cnn_levers.py --cpu-class avx2 --threads 1
    .venv-bench/bin/python benchmarks/bench_cnn_levers.py --cpu-class avx2 --threads 2  # the batch split
    .venv-bench/bin/python benchmarks/bench_cnn_levers.py --amp bf16 --threads 2  # bf16 autocast (AMX)

The float32 variants run the RMSprop kernels and the channels-last Flatten throughout, except the
one named after them, which is the last lever set with torch's foreach update and nn.Flatten.
With ``--cpu-class avx2`` the worker process is held to AVX2 (cpu_class.py). ``--amp bf16`` times
the bf16 variants instead (a CPU with native bf16): each adds one lever to the one before, from
the step as it ran before them (torch's foreach RMSprop, nn.Flatten, torch's first block and pooling).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package
import rounds

# name -> (cut unread rows, Winograd blocks, one-pass blocks); with --threads above 1 one more
# variant runs all of them on the whole batch with torch's (oneDNN's) own threads, not split
WHOLE = "all, whole batch, torch threads"
VARIANTS = {
    "plain": (False, {}, set()),
    "cut rows": (True, {}, set()),
    "+ conv1 one-pass": (True, {}, {"conv1"}),
    "+ conv3 Winograd": (True, {"conv3": 3}, {"conv1"}),
    "+ conv2 Winograd (all)": (True, {"conv2": 2, "conv3": 3}, {"conv1"}),
}
# float32: all of the above with torch's foreach RMSprop and nn.Flatten (the step before the kernels)
BEFORE_KERNELS = "all, foreach RMSprop + nn.Flatten"
# bf16 autocast: name -> (RMSprop kernels, channels-last Flatten, one-pass conv1 block, one-pass pool+ReLU)
BF16_VARIANTS = {
    "plain": (False, False, set(), set()),
    "+ RMSprop kernels": (True, False, set(), set()),
    "+ channels-last Flatten": (True, True, set(), set()),
    "+ conv1 one-pass": (True, True, {"conv1"}, set()),
    "+ conv2 pool+ReLU (all)": (True, True, {"conv1"}, {"conv2"}),
}


def worker(args) -> dict:
    import torch
    from torch import nn

    from mnistlab.cnn import Trainer, resolve_config
    from mnistlab.cnn.flatten import Flatten
    from mnistlab.cnn.levers import process_settings
    from mnistlab.data import load_dataset

    torch.set_num_threads(args.threads)
    bf16 = args.amp == "bf16"
    data = load_dataset("mnist").subset(64 * args.steps, 100)
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config("seed", epochs=1, seed=0, amp="on" if bf16 else "off",
                                threads=args.threads)
        trainer = Trainer(config, data, os.path.join(tmp, "run"), progress=False)
    order = torch.randperm(trainer.n_train, generator=torch.Generator().manual_seed(0))
    last = list(BF16_VARIANTS if bf16 else VARIANTS)[-1]  # every lever on
    variants = dict(BF16_VARIANTS) if bf16 else {**VARIANTS, BEFORE_KERNELS: VARIANTS[last]}
    split = trainer.split
    if split is not None:
        variants[WHOLE] = variants[last]
    times: dict[str, list[float]] = {name: [] for name in variants}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    with process_settings(trainer.levers):
        trainer.net.train()
        for round_ in range(args.rounds + 1):  # the first round warms every variant up, untimed
            for name in rounds.rotated(list(variants), round_):
                net = trainer.net
                if bf16:
                    kernels, flatten, one_pass, relu_pools = variants[name]
                    trainer.optimizer._native = kernels
                    net.flatten.flatten = Flatten() if flatten else nn.Flatten()
                    net.pooled_conv, net.pool_relu = set(one_pass), set(relu_pools)
                else:
                    cut, fast, one_pass = variants[name]
                    net.crop, net.winograd, net.pooled_conv = cut, dict(fast), set(one_pass)
                    trainer.optimizer._native = name != BEFORE_KERNELS
                    net.flatten.flatten = nn.Flatten() if name == BEFORE_KERNELS else Flatten()
                trainer.split = None if name == WHOLE else split
                torch.set_num_threads(args.threads if name == WHOLE else trainer.levers.step_threads)
                for step in range(args.steps):
                    t0, w0 = time.process_time(), time.perf_counter()
                    trainer._train_step(order[step * 64 : (step + 1) * 64], trainer._acc)
                    float(trainer._acc[0])
                    if round_:
                        times[name].append(time.process_time() - t0)
                        walls[name].append(time.perf_counter() - w0)
        parts, threads = trainer.levers.data_parallel, trainer.levers.threads
        how = f"batch split across {parts} threads" if parts > 1 else f"{threads} torch thread(s)"
    return {"ms": {name: [1000 * t for t in values] for name, values in times.items()},
            "wall_ms": {name: [1000 * t for t in values] for name, values in walls.items()}, "how": how}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    rounds.add_common_options(parser, rounds=10, threads=1, threads_help="torch threads (default 1)",
                              held="the worker")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round (default 10)")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="off: the float32 levers (default); bf16: the bf16 autocast levers")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rounds.print_header(args.cpu_class, ["torch"])
    load = rounds.load_average()
    own = ["--worker", "--rounds", str(args.rounds), "--threads", str(args.threads)]
    own += ["--steps", str(args.steps), "--amp", args.amp]
    result = rounds.run_worker([sys.executable, __file__, *own], env=cpu_class.class_env(args.cpu_class))
    if "error" in result:
        print(result["error"])
        return 1
    arithmetic = "bf16 autocast" if args.amp == "bf16" else "float32"
    print(f"seed recipe, {arithmetic}, batch 64, {result['how']}, {args.rounds} rounds x {args.steps} steps, "
          f"load average {load:.1f} before, {rounds.load_average():.1f} after")
    print("CPU time: the process's, all threads (what the work costs); wall: what a step takes")
    print(f"{'variant':<32}{'CPU ms/step':>12}{'p25-p75':>12}{'vs plain':>10}{'wall ms':>9}{'vs plain':>10}")
    plain, plain_wall = (statistics.median(result[key]["plain"]) for key in ("ms", "wall_ms"))
    for name, values in result["ms"].items():
        q = statistics.quantiles(values, n=4)
        median, wall = statistics.median(values), statistics.median(result["wall_ms"][name])
        print(f"{name:<32}{median:>12.2f}{f'{q[0]:.1f}-{q[2]:.1f}':>12}{median / plain:>9.2f}x"
              f"{wall:>9.2f}{wall / plain_wall:>9.2f}x")
    rounds.write_json(args.json, {"args": vars(args), "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
