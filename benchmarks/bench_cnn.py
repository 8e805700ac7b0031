"""CPU benchmark of the seed recipe (the article's CNN, RMSprop lr 1e-3, batch 64, pixels / 255).

Contenders, each in its own subprocess so that none inherits another's threads or caches:

* ``mnistlab``       mnistlab's trainer with its defaults (resident data, index batches, bf16 autocast +
                     channels_last where the CPU has native bf16)
* ``mnistlab-fp32``  the same in float32 (the lever switched off)
* ``torch``          the PyTorch tutorial loop: DataLoader(TensorDataset) with shuffle, torch.optim.RMSprop
                     (alpha 0.9, eps 1e-7), same network and Glorot init
* ``keras``          Keras 3 on TensorFlow-CPU: the seed's model.fit(batch_size=64) with RMSprop defaults

Rounds alternate the contenders (rotating the order); the report gives medians of the per-epoch
training times (evaluation excluded), test accuracy after the last epoch, and ratios to Keras.

    make bench-venv && .venv-bench/bin/python benchmarks/bench_cnn.py               # 5 epochs, 1 round
    .venv-bench/bin/python benchmarks/bench_cnn.py --epochs 1 --rounds 3 --train-size 20000   # timing only
    .venv-bench/bin/python benchmarks/bench_cnn.py --cpu-class avx2   # every contender held to AVX2

``--cpu-class avx2`` holds every contender to AVX2 on a wider CPU (see cpu_class.py); the report
starts with the CPU model, what it has, the class of the run, and what each library actually used.

With ``--train-size N`` an epoch uses the first N training images and its time is scaled to
60,000 images (seconds per full epoch), so short runs still compare per-epoch speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package
import rounds

CONTENDERS = ("mnistlab", "mnistlab-fp32", "torch", "keras")
# also selectable with --contenders: single levers, for finding which pay on a CPU
EXTRA = ("mnistlab-fp32-cl", "mnistlab-fp32-nchw", "mnistlab-compile")
FULL = 60_000


def load(train_size: int):
    from mnistlab.data import load_dataset

    ds = load_dataset("mnist")
    return ds.subset(train_size or None, None)


# ---------------------------------------------------------------------------------------- workers
def worker_mnistlab(args, amp: str, **how) -> dict:
    import torch

    from mnistlab.cnn import Trainer, resolve_config

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load(args.train_size)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config(
            "seed", epochs=args.epochs, seed=args.seed, amp=amp, threads=args.threads, **how
        )
        trainer = Trainer(config, ds, os.path.join(tmp, "run"), progress=False)
        result = trainer.run()
    return {
        "epoch_s": [h["train_seconds"] for h in result.history],
        "epoch_cpu_s": [h["train_cpu_seconds"] for h in result.history],
        "test_acc": [h["test_accuracy"] for h in result.history],
        "threads": trainer.levers.threads,  # with batches split across threads, torch itself runs 1 per part
        "threads_note": (
            f"batch split across {trainer.levers.data_parallel} threads, "
            f"{trainer.levers.step_threads} torch thread(s) each"
        )
        if trainer.levers.data_parallel > 1
        else f"{trainer.levers.step_threads} torch thread(s)",
        "levers": {
            "amp": trainer.levers.amp_dtype,
            "channels_last": trainer.levers.channels_last,
            "data_parallel": trainer.levers.data_parallel,
            "compile": trainer.levers.compile,
            "measured": trainer.levers.measured,
        },
    }


def seed_net():
    """The seed network in plain torch.nn, Keras-initialized: the baselines' model (CPU and GPU scripts)."""
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(576, 70),
        nn.ReLU(),
        nn.Linear(70, 10),
    )
    for m in net.modules():  # Keras' Glorot-uniform kernels and zero biases
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def worker_torch(args) -> dict:
    """What the PyTorch tutorials do: a DataLoader over tensors, one Python-level batch at a time."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ds = load(args.train_size)
    x = torch.from_numpy(ds.train_images).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(ds.train_labels.astype(np.int64))
    xt = torch.from_numpy(ds.test_images).float().div_(255).unsqueeze(1)
    yt = torch.from_numpy(ds.test_labels.astype(np.int64))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    net = seed_net()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, cpus, accs = [], [], []
    for _ in range(args.epochs):
        net.train()
        t0, c0 = time.perf_counter(), time.process_time()
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        net.eval()
        with torch.no_grad():
            accs.append(float((net(xt).argmax(1) == yt).float().mean()))
    return {
        "epoch_s": times,
        "epoch_cpu_s": cpus,
        "test_acc": accs,
        "threads": torch.get_num_threads(),
        "threads_note": f"{torch.get_num_threads()} torch thread(s)",
    }


def worker_keras(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    ds = load(args.train_size)
    x = (ds.train_images.astype("float32") / 255)[..., None]
    xt = (ds.test_images.astype("float32") / 255)[..., None]
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(70, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert model.count_params() == 96_844
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    times, cpus, accs = [], [], []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)
            cpus.append(time.process_time() - self.c0)
            accs.append(
                float((model.predict(xt, batch_size=1000, verbose=0).argmax(1) == ds.test_labels).mean())
            )

    model.fit(
        x, ds.train_labels.astype("int64"), batch_size=64, epochs=args.epochs, verbose=0, callbacks=[Clock()]
    )
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {
        "epoch_s": times,
        "epoch_cpu_s": cpus,
        "test_acc": accs,
        "threads": intra or os.cpu_count(),
        "threads_note": f"TF intra-op {intra or 'default'}, inter-op {inter or 'default'}, "
        f"jit_compile={model.jit_compile}",
    }


# ---------------------------------------------------------------------------------------- driver
def run_worker(name: str, args) -> dict:
    own = ["--worker", name, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    own += ["--train-size", str(args.train_size), "--threads", str(args.threads)]
    return rounds.run_worker([sys.executable, __file__, *own], env=cpu_class.class_env(args.cpu_class))


WORKERS = {
    "mnistlab": lambda a: worker_mnistlab(a, "auto"),
    "mnistlab-fp32": lambda a: worker_mnistlab(a, "off"),
    "mnistlab-fp32-cl": lambda a: worker_mnistlab(a, "off", channels_last="on"),
    "mnistlab-fp32-nchw": lambda a: worker_mnistlab(a, "off", channels_last="off"),
    "mnistlab-compile": lambda a: worker_mnistlab(a, "off", compile=True),
    "torch": worker_torch,
    "keras": worker_keras,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--train-size", type=int, default=0, help="train on the first N images (0: all 60,000)"
    )
    rounds.add_common_options(
        parser, rounds=1, threads=os.cpu_count() or 1,
        threads_help="threads for every contender (default: all cores; 0: each library's own default, "
        "which for mnistlab depends on the load average)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    names = [n for n in args.contenders.split(",") if n]
    unknown = set(names) - set(CONTENDERS) - set(EXTRA)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS + EXTRA)}")
    scale = FULL / (args.train_size or FULL)
    load(0)  # fetch/cache the data once, outside any timing
    rounds.print_header(args.cpu_class, sorted({"torch" if n != "keras" else "keras" for n in names}))
    print(
        f"seed recipe, {args.epochs} epoch(s), {args.rounds} round(s), train size {args.train_size or FULL}, "
        f"threads {args.threads or 'default'}, {os.cpu_count()} CPUs, load average "
        f"{rounds.load_average():.1f}; the machine may be shared: see CPU time",
        flush=True,
    )

    def describe(res: dict) -> tuple[str, float, str]:
        per_epoch = " ".join(f"{t * scale:.2f}" for t in res["epoch_s"])
        cpu = " ".join(f"{t * scale:.2f}" for t in res.get("epoch_cpu_s", []))
        levers = f", levers {res['levers']}" if res.get("levers") else ""
        threads = res.get("threads_note", res.get("threads"))
        return f"wall s/epoch [{per_epoch}] CPU s/epoch [{cpu}]", res["test_acc"][-1], f"{threads}{levers}"

    results = rounds.run_rounds(names, args.rounds, lambda name: run_worker(name, args), describe)
    print()
    summary = {}
    for name in names:
        ok = [res for res in results[name] if "error" not in res]
        if not ok:
            continue
        # The first epoch carries one-off costs (Keras traces and XLA-compiles its step, oneDNN picks
        # kernels): medians are over the later epochs when there are any; the first epoch is shown apart.
        walls = rounds.pooled_epochs(ok, "epoch_s", scale)
        summary[name] = {
            "s_per_epoch": statistics.median(walls),
            "cpu_s_per_epoch": rounds.epoch_median(ok, "epoch_cpu_s", scale),
            "first_epoch_s": statistics.median(res["epoch_s"][0] * scale for res in ok),
            "test_acc": statistics.median(res["test_acc"][-1] for res in ok),
            "spread": (min(walls), max(walls)),
            "threads": ok[-1].get("threads_note", ok[-1].get("threads")),
        }
    ref = summary.get("keras")
    print("\n" + cpu_class.class_line(args.cpu_class))
    print("Medians per full epoch. Wall time is what a user waits; CPU time (all threads of the process) is")
    print("what the work costs and hardly moves when other processes load the machine.")
    print(
        f"{'contender':<15}{'wall s/epoch':>13}{'CPU s/epoch':>12}{'1st epoch':>10}{'test acc':>10}"
        f"{'wall vs keras':>15}{'CPU vs keras':>14}  spread (wall)  threads"
    )
    for name, s in summary.items():
        wall = f"{s['s_per_epoch'] / ref['s_per_epoch']:.2f}x" if ref else "-"
        cpu = f"{s['cpu_s_per_epoch'] / ref['cpu_s_per_epoch']:.2f}x" if ref else "-"
        print(
            f"{name:<15}{s['s_per_epoch']:>13.2f}{s['cpu_s_per_epoch']:>12.2f}{s['first_epoch_s']:>10.2f}"
            f"{100 * s['test_acc']:>9.2f}%{wall:>15}{cpu:>14}  "
            f"{s['spread'][0]:.2f}-{s['spread'][1]:.2f}  {s['threads']}"
        )
    if "mnistlab" in summary and "torch" in summary:
        m, t = summary["mnistlab"], summary["torch"]
        print(
            f"mnistlab vs the tutorial loop: wall {m['s_per_epoch'] / t['s_per_epoch']:.2f}x, "
            f"CPU {m['cpu_s_per_epoch'] / t['cpu_s_per_epoch']:.2f}x"
        )
    rounds.write_json(args.json, {"args": vars(args), "results": results, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
