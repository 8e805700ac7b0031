"""Old against new MLP trainer code, part by part: CPU µs per call of each piece of a training step.

    git -C . archive main | tar -x -C /tmp/mlp-old      # or: git worktree add --detach /tmp/mlp-old main
    PYTHONPATH=src python benchmarks/mlp_step_parts.py old=/tmp/mlp-old/src new=src --rounds 6 --epochs 3

Loads each SRC's package side by side as mlp_interleaved.py does (NAME=SRC[@THREADS]), wraps the
pieces of a step (the Backprop methods below, the optimizer's step, the penalty) with per-thread CPU
timers, and runs whole fits that alternate, the order rotating every round, with mlp_interleaved's
setup (default preset, batch 500, raw images, the per-epoch test pass). Inside training, right
after the first layer's products have streamed the chunk's inputs through the caches, small NumPy
calls cost several times their time in a warm loop: time them here, not in isolation. Prints each
piece's median µs per call (the first epoch of each fit left out), the median CPU ms per epoch and
the parameter hashes (the same hash means bit-identical training).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import statistics
import sys
import tempfile
import time

import numpy as np
import rounds  # benchmarks/ is not a package: run as a script, its folder is on sys.path
from mlp_interleaved import load_variants, variant_parser

# (module, class, method) of every piece timed; a piece a variant lacks is left out for it
PIECES = [
    ("backprop", "Backprop", "run"),
    ("backprop", "Backprop", "_first_layer_rows"),
    ("backprop", "Backprop", "_forward_rows"),
    ("backprop", "Backprop", "_loss_and_output_delta"),
    ("backprop", "Backprop", "_hidden_deltas"),
    ("backprop", "Backprop", "_weight_gradients"),
    ("backprop", "Backprop", "_deeper_gradients"),
    ("optimizers", "SGD", "step"),
    ("train", "FitState", "penalty"),
]


def wrap(owner: type, method: str, times: list[float], counting: list[bool]) -> None:
    inner = getattr(owner, method)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        start = time.thread_time()
        result = inner(*args, **kwargs)
        if counting[0]:
            times.append(time.thread_time() - start)
        return result

    setattr(owner, method, timed)


def main() -> None:
    args = variant_parser(__doc__, rounds=6, epochs=3).parse_args()
    with tempfile.TemporaryDirectory() as root:
        variants, threads = load_variants(args.variants, root, args.threads)
        names = list(variants)
        if len(set(map(id, variants.values()))) < len(names):
            sys.exit("give every variant its own SRC: the timers are per package")
        times = {n: collections.defaultdict(list) for n in names}
        counting = {n: [False] for n in names}  # off during each fit's first epoch
        for name, package in variants.items():
            for module, cls, method in PIECES:
                owner = getattr(sys.modules[f"{package.__name__}.mlp.{module}"], cls, None)
                if owner is not None and hasattr(owner, method):
                    wrap(owner, method, times[name][f"{cls}.{method}"], counting[name])
        ds = variants[names[0]].data.load_dataset("mnist", progress=False)
        train_x, train_y = ds.train_images, ds.train_labels.astype(np.int64)
        test = (ds.test_images, ds.test_labels.astype(np.int64))
        epoch_cpu = {n: [] for n in names}
        hashes = {n: set() for n in names}
        for r in range(args.rounds):
            for name in rounds.rotated(names, r):
                package = variants[name]
                cfg = package.mlp.preset("default", batch_size=500, epochs=args.epochs)
                preprocess = package.data.Preprocessor.fit(cfg.preprocess, train_x)
                model = package.mlp.MLP(cfg, preprocess=preprocess)
                last = [time.process_time()]

                def lap(_row, name=name, last=last) -> None:
                    now = time.process_time()
                    if counting[name][0]:
                        epoch_cpu[name].append(1000 * (now - last[0]))
                    counting[name][0] = True
                    last[0] = now

                counting[name][0] = False
                trainer = package.mlp.Trainer(model, adapt_threads=False)
                trainer.fit(train_x, train_y, test=test, threads=threads[name], callback=lap)
                counting[name][0] = False
                hashes[name].add(hashlib.sha1(model.params.tobytes()).hexdigest()[:12])
            print(f"round {r + 1} done | load average {rounds.load_average():.1f}", flush=True)
    pieces = list(dict.fromkeys(k for n in names for k in times[n]))
    print(f"{'µs per call (median)':34s}" + "".join(f"{n:>12s}" for n in names))
    for piece in pieces:
        cells = [statistics.median(times[n][piece]) * 1e6 if times[n][piece] else float("nan") for n in names]
        print(f"{piece:34s}" + "".join(f"{c:12.1f}" for c in cells))
    epochs = [statistics.median(epoch_cpu[n]) for n in names]
    print(f"{'CPU ms per epoch (median)':34s}" + "".join(f"{ms:12.1f}" for ms in epochs))
    for name in names:
        print(f"{name} ({threads[name]} thread(s)): parameter hashes {sorted(hashes[name])}")


if __name__ == "__main__":
    main()
