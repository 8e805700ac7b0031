"""The contenders of bench_mlp.py: the same training in mnistlab, PyTorch, Keras/TensorFlow and
scikit-learn, and NumPy's GEMM peak. bench_mlp.py runs each in its own process
(``bench_mlp.py --worker ENGINE ...``), which prints one JSON line.

Every engine gets the same float32 inputs (mnistlab: the raw images, preprocessed chunk by chunk
inside its timed loop, its normal path), the same initial weights (scikit-learn: its own init), the
same hyperparameters and thread count; what is timed is the training call alone.
"""

from __future__ import annotations

import json
import os
import time


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


def config(name: str, batch: int, epochs: int):
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
    with Clock() as clock:
        hist = trainer.fit(raw_train, y, test=(raw_test, yt), threads=threads)
    choices = trainer.thread_choice.log if trainer.thread_choice else []
    used = f"BLAS threads {threads} -> limit {trainer.threads}"
    if choices:
        used += "; chose " + ", ".join(
            f"{n} from epoch {e + 1} ({many:.2f} vs {one:.2f} us/image)" for e, n, many, one in choices
        )
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

    with Clock() as clock:
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
    with Clock() as clock:
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
        with Clock() as clock:
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


class Clock:
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


def thread_arg(text: str) -> int | str:
    return text if text == "auto" else int(text)


def worker(args) -> None:
    """Run ``args.worker`` (an engine, or "peak") and print its result as one JSON line."""
    if args.worker == "peak":
        print(json.dumps({"gflops": work_peak(), "blas": _blas_info()}))
        return
    cfg = config(args.config, args.batch, args.epochs)
    data, raw, pre = _mnist(cfg)
    fn = globals()[f"work_{args.worker}"]
    (seconds, cpu), acc, note, *extra = fn(cfg, data, thread_arg(args.threads), raw, pre)
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
