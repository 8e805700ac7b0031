"""Benchmark: 35 epochs of the NumPy MLP against PyTorch, Keras/TensorFlow and scikit-learn.

    make bench-mlp                       # builds .venv-bench, runs everything (several minutes)
    .venv-bench/bin/python benchmarks/bench_mlp.py --runs 3 --threads 2
    .venv-bench/bin/python benchmarks/bench_mlp.py --cpu-class avx2      # every engine held to AVX2
    # mnistlab's default thread choice against PyTorch with 2 threads, each round after a busy minute:
    .venv-bench/bin/python benchmarks/bench_mlp.py --engines mnistlab,torch --configs default --batches 500 \
        --threads 2 --mnistlab-threads auto --busy-first 60 --runs 5

Every training runs in its own process (a fresh interpreter, nothing shared or warmed), the
engines alternate within each round (the order rotates every round), and each configuration is
run ``--runs`` times; the table shows medians. What is timed is the training call alone: data
loading and preprocessing happen before the clock starts (mnistlab: it preprocesses the raw
training and test images chunk by chunk inside its timed loop), all engines get the same float32
inputs, the same initial weights (scikit-learn: its own init), the same hyperparameters and the
same thread count. Every engine measures the test accuracy after each epoch and keeps a running
training loss and accuracy, as mnistlab's history does (scikit-learn: loss only, test accuracy at
the end). Where a library lacks an option, the nearest one is used and the table's note column
says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_class  # benchmarks/ is not a package

ENGINES = ("mnistlab", "torch", "keras", "sklearn")
CONFIGS = ("default", "seed")


# ----------------------------------------------------------------------------- workers


def _mnist(cfg):
    """The same float32 inputs for every engine, preprocessed as the config says (fitted on the
    training split), plus the raw training and test images: mnistlab trains and scores from those,
    preprocessing each chunk inside its timed loop (its normal path), while the others get the
    preprocessed arrays free."""
    import numpy as np

    from mnistlab.data import Preprocessor, load_dataset

    ds = load_dataset("mnist", progress=False)
    pre = Preprocessor.fit(cfg.preprocess, ds.train_images)
    x = pre(ds.train_images).reshape(len(ds.train_images), -1)
    xt = pre(ds.test_images).reshape(len(ds.test_images), -1)
    data = (x, ds.train_labels.astype(np.int64), xt, ds.test_labels.astype(np.int64))
    return data, (ds.train_images, ds.test_images), pre


def _config(name: str, batch: int, epochs: int):
    from mnistlab.mlp import preset

    return preset(name, batch_size=batch, epochs=epochs)


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        infos = [
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
        return "; ".join(infos)
    except ImportError:
        return "threadpoolctl missing"


def work_mnistlab(cfg, data, threads, raw, pre):
    from mnistlab.mlp import MLP, Trainer

    _, y, _, yt = data
    raw_train, raw_test = raw
    model = MLP(cfg, preprocess=pre)
    trainer = Trainer(model)
    with _Clock() as clock:
        hist = trainer.fit(raw_train, y, test=(raw_test, yt), threads=threads)
    choices = trainer.thread_choice.log if trainer.thread_choice else []
    used = f"BLAS threads {threads} -> limit {trainer.threads}"
    if choices:
        used += "; chose " + ", ".join(f"{n} from epoch {e + 1}" for e, n, _, _ in choices)
    return clock.result, hist[-1]["test_accuracy"], "", trainer.layout, used


def work_torch(cfg, data, threads, raw=None, pre=None):
    import numpy as np
    import torch

    from mnistlab.mlp import MLP, learning_rate

    torch.set_num_threads(threads)
    x, y, xt, yt = (torch.from_numpy(a) for a in data)
    init = MLP(cfg)
    act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[cfg.activation]
    layers = []
    for i, (w, b) in enumerate(zip(init.weights, init.biases)):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(init.weights) - 1:
            layers.append(act())
    net = torch.nn.Sequential(*layers)
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": cfg.l2}, {"params": biases, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: learning_rate(cfg, e) / cfg.lr)
    if cfg.output == "softmax":
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

        def loss_fn(out, target):
            onehot = torch.nn.functional.one_hot(target, cfg.n_classes).to(out.dtype)
            return bce(out, onehot) / len(target)

    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x)

    def fit() -> float:
        acc = 0.0
        for _ in range(cfg.epochs):
            net.train()
            perm = torch.randperm(n, generator=gen)
            total = correct = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                xb, yb = x[idx], y[idx]
                out = net(xb)
                loss = loss_fn(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += (out.argmax(1) == yb).sum().item()
            sched.step()
            with torch.no_grad():
                acc = (net(xt).argmax(1) == yt).float().mean().item()
        return acc

    with _Clock() as clock:
        acc = fit()
    note = "standard momentum (no seed form)" if cfg.momentum_form == "seed" else ""
    return clock.result, acc, note, None, f"torch threads {torch.get_num_threads()}"


def work_keras(cfg, data, threads, raw=None, pre=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    from mnistlab.mlp import MLP, learning_rate

    keras.utils.set_random_seed(cfg.seed)
    x, y, xt, yt = data
    init = MLP(cfg)
    act = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}[cfg.activation]
    # keras' L2(l) adds l * sum(w^2): half our l2 gives the same gradient l2 * w
    reg = keras.regularizers.L2(cfg.l2 / 2) if cfg.l2 else None
    layers = [keras.Input((cfg.input_size,))]
    for i, w in enumerate(init.weights):
        last = i == len(init.weights) - 1
        layers.append(
            keras.layers.Dense(w.shape[1], activation=(cfg.output if last else act), kernel_regularizer=reg)
        )
    model = keras.Sequential(layers)
    model.set_weights([a for w, b in zip(init.weights, init.biases) for a in (w, b)])
    opt = keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.output == "softmax":
        loss = keras.losses.SparseCategoricalCrossentropy()
        yk, ytk = y, yt
    else:
        bce = keras.losses.BinaryCrossentropy(reduction="sum_over_batch_size")

        def loss(target, pred):  # summed over the outputs, like ours
            return cfg.n_classes * bce(target, pred)

        yk, ytk = np.eye(cfg.n_classes, dtype=np.float32)[y], np.eye(cfg.n_classes, dtype=np.float32)[yt]
    metric = "sparse_categorical_accuracy" if cfg.output == "softmax" else "categorical_accuracy"
    model.compile(optimizer=opt, loss=loss, metrics=[metric])
    schedule = keras.callbacks.LearningRateScheduler(lambda e, lr: learning_rate(cfg, e))
    with _Clock() as clock:
        hist = model.fit(
            x,
            yk,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            shuffle=True,
            verbose=0,
            validation_data=(xt, ytk),
            callbacks=[schedule],
        )
    acc = hist.history[f"val_{metric}"][-1]
    note = "standard momentum (no seed form)" if cfg.momentum_form == "seed" else ""
    return clock.result, acc, note


def work_sklearn(cfg, data, threads, raw=None, pre=None):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y, xt, yt = data
    notes = ["own init", "test accuracy at the end only"]
    if cfg.schedule != "constant":
        notes.append(f"constant lr (no {cfg.schedule} schedule)")
    if cfg.output != "softmax":
        notes.append("softmax output (no sigmoid/log-loss)")
    if cfg.momentum_form == "seed":
        notes.append("standard momentum")
    clf = MLPClassifier(
        hidden_layer_sizes=cfg.hidden,
        activation={"relu": "relu", "sigmoid": "logistic", "tanh": "tanh"}[cfg.activation],
        solver="sgd",
        # scikit-learn divides its penalty by the batch size; this is our per-batch l2
        alpha=cfg.l2 * cfg.batch_size,
        batch_size=cfg.batch_size,
        learning_rate="constant",
        learning_rate_init=cfg.lr,
        momentum=cfg.momentum,
        nesterovs_momentum=cfg.nesterov,
        max_iter=cfg.epochs,
        shuffle=True,
        random_state=cfg.seed,
        tol=0.0,
        n_iter_no_change=cfg.epochs + 1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with _Clock() as clock:
            clf.fit(x, y)
    return clock.result, float((clf.predict(xt) == yt).mean()), "; ".join(notes)


def work_peak():
    """float32 GEMM peak of NumPy's BLAS: the best of several large square products."""
    import numpy as np

    n = 3072
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.copy()
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(6))
    return 2 * n**3 / best / 1e9


class _Clock:
    """Wall seconds and this process's CPU seconds (all its threads) of the training call. CPU
    time is less sensitive than wall time to other processes competing for the cores."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.result = (time.perf_counter() - self.wall, time.process_time() - self.cpu)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(args) -> None:
    if args.worker == "peak":
        print(json.dumps({"gflops": work_peak(), "blas": _blas_info()}))
        return
    cfg = _config(args.config, args.batch, args.epochs)
    data, raw, pre = _mnist(cfg)
    fn = globals()[f"work_{args.worker}"]
    (seconds, cpu), acc, note, *extra = fn(cfg, data, _thread_arg(args.threads), raw, pre)
    layout = extra[0] if extra else None
    used = extra[1] if len(extra) > 1 else f"{args.threads} thread(s)"
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": cpu,
                "test_accuracy": acc,
                "note": note,
                "blas": _blas_info(),
                "layout": layout,
                "threads_used": used,
            }
        )
    )


# ----------------------------------------------------------------------------- driver


def training_flops(cfg, n_train=60000, n_test=10000, layout=None) -> float:
    """Multiply-adds x 2 of the matrix products of one training: forward, weight gradients, the
    input gradients of every layer but the first, and the per-epoch test forward pass.

    Without ``layout``, nominal: every product over all inputs. With the trainer's ``layout``, the
    products mnistlab executes: first-layer products over the core input columns for every image
    and over the tail columns for the images that touch them (blank columns skipped)."""
    sizes = cfg.sizes
    first = sizes[0] * sizes[1]
    train_first = test_first = first
    if layout:
        train_first = sizes[1] * (layout["core"] + layout["tail_rows"] * layout["tail"])
        rest = sizes[0] - layout["core"]
        test_first = sizes[1] * (layout["core"] + layout.get("test_rest_rows", 1.0) * rest)
    deeper = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    per_epoch = 2 * (n_train * (2 * (train_first + deeper) + deeper) + n_test * (test_first + deeper))
    return cfg.epochs * per_epoch


def _thread_arg(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _env(threads: int | str, cls: str) -> dict[str, str]:
    env = cpu_class.class_env(cls)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads == "auto":  # as a user's shell has it: no limit, the library decides
            env.pop(var, None)
        else:
            env[var] = str(threads)
    # These slow a current OpenBLAS (see the machine notes); the benchmark runs without them and
    # reports the kernel it got.
    if cls == "native":
        env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _spawn(argv: list[str], threads: int | str, timeout: float, cls: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads, cls), timeout=timeout)
    except subprocess.TimeoutExpired:  # a loaded machine can stretch one engine past any limit: keep the rest
        return {"error": f"over the {timeout:.0f} s timeout (--timeout)"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def driver(args) -> int:
    engines = [e for e in args.engines.split(",") if e]
    configs = [c for c in args.configs.split(",") if c]
    batches = [int(b) for b in args.batches.split(",") if b]
    threads = args.threads
    ours_threads = args.mnistlab_threads or threads
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(cpu_class.header(args.cpu_class))
    for kind in ("numpy", "torch", "keras"):
        if kind == "numpy" or kind in engines:
            print(f"  {kind} uses: {cpu_class.probe(kind, args.cpu_class)}", flush=True)
    print(
        f"bench-mlp: {args.runs} runs x engines {', '.join(engines)}, {args.epochs} epochs, "
        f"{threads} thread(s) "
        f"(mnistlab: {ours_threads}), cpu count {os.cpu_count()}, load average {load:.1f} at the start; "
        "the machine may be shared",
        flush=True,
    )
    peaks = []
    results: dict[tuple, list[dict]] = {}
    blas = ""
    started = time.time()
    for r in range(args.runs):
        peak = _spawn(["--worker", "peak"], threads, 300, args.cpu_class)
        if "gflops" in peak:
            peaks.append(peak["gflops"])
            blas = peak["blas"]
        for config in configs:
            for batch in batches:
                order = engines[r % len(engines) :] + engines[: r % len(engines)]
                if args.busy_first:
                    busy(args.busy_first)
                for engine in order:
                    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                    res = _spawn(
                        [
                            "--worker",
                            engine,
                            "--config",
                            config,
                            "--batch",
                            str(batch),
                            "--epochs",
                            str(args.epochs),
                        ],
                        ours_threads if engine == "mnistlab" else threads,
                        args.timeout,
                        args.cpu_class,
                    )
                    results.setdefault((config, batch, engine), []).append(res)
                    shown = (
                        f"{res['seconds']:.2f} s, acc {res['test_accuracy']:.4f}"
                        if "seconds" in res
                        else res["error"]
                    )
                    print(
                        f"  run {r + 1} {config:8s} batch {batch:6d} {engine:9s} {shown}  "
                        f"(load average {load:.1f} "
                        f"at its start; {res.get('threads_used', '')})",
                        flush=True,
                    )
    print(f"(finished in {time.time() - started:.0f} s)\n")
    print(
        f"CPU class: {args.cpu_class} ({'held to AVX2' if args.cpu_class == 'avx2' else 'native'}) on "
        f"{cpu_class.cpu_model()} ({cpu_class.hardware_isa()}); threads: {threads} for every engine, "
        f"mnistlab {ours_threads}"
        + (f"; every round after {args.busy_first:.0f} s of all cores busy" if args.busy_first else "")
    )
    print(report(results, configs, batches, engines, peaks, blas, args.epochs, threads))
    return 0


def busy(seconds: float) -> None:
    """Keep every core busy for ``seconds`` (other work just before a training: the load average rises)."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]
    for proc in procs:
        proc.wait()


def report(results, configs, batches, engines, peaks, blas, epochs, threads) -> str:
    from mnistlab.mlp.train import describe_layout

    peak = max(peaks) if peaks else float("nan")
    lines = [
        f"float32 GEMM peak (NumPy, {threads} thread(s), 3072^3): {peak:.0f} GFLOP/s; BLAS: {blas}",
        "",
        "| config | batch | engine | median s | runs (s) | mnistlab / engine | median CPU s | mnistlab / "
        "engine (CPU) | test acc | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = []
    for config in configs:
        for batch in batches:
            ours = _median(results.get((config, batch, "mnistlab"), []))
            ours_cpu = _median(results.get((config, batch, "mnistlab"), []), "cpu")
            for engine in engines:
                runs = results.get((config, batch, engine), [])
                ok = [r for r in runs if "seconds" in r]
                note = next((r.get("note", "") for r in ok if r.get("note")), "")
                errs = [r["error"] for r in runs if "error" in r]
                if errs:
                    note = (note + "; " if note else "") + f"failed: {errs[0][:80]}"
                if not ok:
                    lines.append(f"| {config} | {batch} | {engine} | - | - | - | - | - | - | {note} |")
                    continue
                med, cpu = _median(ok), _median(ok, "cpu")
                acc = statistics.median(r["test_accuracy"] for r in ok)
                mine = engine == "mnistlab"
                ratio = "-" if mine else (f"{ours / med:.2f}x" if ours else "n/a")
                ratio_cpu = "-" if mine else (f"{ours_cpu / cpu:.2f}x" if ours_cpu else "n/a")
                times = ", ".join(f"{r['seconds']:.2f}" for r in ok)
                lines.append(
                    f"| {config} | {batch} | {engine} | {med:.2f} | {times} | {ratio} | {cpu:.2f} | "
                    f"{ratio_cpu} | {100 * acc:.2f}% | {note} |"
                )
            if ours:
                cfg = _config(config, batch, epochs)
                nominal = training_flops(cfg)
                layout = next(
                    (r["layout"] for r in results.get((config, batch, "mnistlab"), []) if r.get("layout")),
                    None,
                )
                executed = training_flops(cfg, layout=layout)
                summaries.append(
                    f"mnistlab {config} batch {batch}: {nominal / 1e9:.0f} GFLOP of matrix products over "
                    f"all 784 inputs, {executed / 1e9:.0f} GFLOP executed "
                    f"({describe_layout(layout or {})}); {executed / ours / 1e9:.0f} GFLOP/s executed in "
                    f"{ours:.2f} s wall = {100 * executed / ours / 1e9 / peak:.0f}% of the GEMM peak "
                    f"({executed / ours_cpu / 1e9:.0f} GFLOP/s per CPU second); nominal rate "
                    f"{nominal / ours / 1e9:.0f} GFLOP/s"
                )
    return "\n".join(lines + [""] + summaries)


def _median(runs: list[dict], key: str = "seconds") -> float | None:
    ok = [r[key] for r in runs if key in r]
    return statistics.median(ok) if ok else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument(
        "--threads", default=str(os.cpu_count() or 1), help="threads for every engine (default: all cores)"
    )
    p.add_argument(
        "--mnistlab-threads", help="mnistlab's --threads, if not the others' (auto: its default choice)"
    )
    p.add_argument(
        "--busy-first", type=float, default=0, help="keep all cores busy this many seconds before each round"
    )
    p.add_argument(
        "--cpu-class",
        choices=cpu_class.CLASSES,
        default="native",
        help="native: what the CPU has; avx2: hold every engine to AVX2 (see cpu_class.py)",
    )
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--batches", default="500,20000")
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds per training before it counts as failed"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
