"""`mnistlab train mlp`: train the NumPy MLP and write a run directory."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import (
    add_dataset_options,
    add_new_run_options,
    chance_note,
    counted,
    info,
    load_dataset_from_args,
)
from .tensorboard_cmd import add_tensorboard_option, log_dir


def register_train(train_sub: argparse._SubParsersAction) -> None:
    from ..mlp.config import PRESETS

    p = train_sub.add_parser(
        "mlp",
        help="train the NumPy multilayer perceptron",
        description="Train the NumPy MLP (784-70-30-10 tanh/softmax by default) and write a run directory. "
        "Options given explicitly override the preset.",
    )
    p.add_argument(
        "--preset", choices=tuple(PRESETS), default="default",
        help="starting configuration (seed: the seed's sigmoid/log-loss setup)",
    )
    add_dataset_options(p)
    add_new_run_options(p, "mlp")
    add_tensorboard_option(p)
    t = add_config_options(p)
    t.add_argument("--profile", action="store_true", help="report the time per phase of the batch loop")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def add_config_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options that set MLPConfig fields (and --threads), shared with `mnistlab sweep mlp`;
    returns the training group for callers to add to."""
    from ..mlp.config import ACTIVATIONS, INITS, MOMENTUM_FORMS, OPTIMIZERS, OUTPUTS, PREPROCESSING, SCHEDULES

    g = p.add_argument_group("network")
    g.add_argument("--layers", type=_sizes, help="hidden layer sizes, e.g. 70,30")
    g.add_argument("--activation", help=f"hidden activation: {', '.join(ACTIVATIONS)}")
    g.add_argument(
        "--output", help=f"output layer: {', '.join(OUTPUTS)} (softmax: cross-entropy; sigmoid: log-loss)"
    )
    g.add_argument("--init", help=f"weight initialization: {', '.join(INITS)}")
    g.add_argument("--dtype", help="float32 (default) or float64")
    g.add_argument("--seed", type=int, help="seed for initialization and shuffling")
    g.add_argument("--preprocess", help=f"pixel preprocessing: {', '.join(PREPROCESSING)}")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument(
        "--optimizer", help=f"update rule: {', '.join(OPTIMIZERS)} (the momentum options apply to sgd)"
    )
    t.add_argument("--lr", type=float, help="(initial) learning rate")
    t.add_argument("--momentum", type=float)
    t.add_argument("--momentum-form", help=f"momentum arithmetic: {', '.join(MOMENTUM_FORMS)}")
    t.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum"
    )
    t.add_argument("--l1", type=float, help="L1 penalty on the weights (never the biases)")
    t.add_argument("--l2", type=float, help="L2 penalty on the weights (never the biases)")
    t.add_argument("--schedule", help=f"learning-rate schedule: {', '.join(SCHEDULES)}")
    t.add_argument("--decay", type=float, help="seed schedule: lr_e = lr_(e-1) / (1 + decay * e)")
    t.add_argument("--step-size", type=int, help="step schedule: epochs per step")
    t.add_argument("--gamma", type=float, help="step schedule: factor per step")
    t.add_argument("--lr-min", type=float, help="cosine schedule: final learning rate")
    t.add_argument("--val", type=int, help="hold out the last N training images for validation")
    t.add_argument(
        "--patience", type=int, help="early stop after N epochs without a better validation accuracy"
    )
    t.add_argument("--threads", type=_threads, default="auto",
                   help="BLAS threads for the matrix products (default auto: all cores, one where timing "
                        "shows that faster)")
    return t


# argparse dest -> MLPConfig field: the same name, except --layers
_FIELDS = {"layers": "hidden"} | {
    name: name
    for name in (
        "activation", "output", "init", "dtype", "seed", "preprocess", "epochs", "batch_size", "optimizer",
        "lr", "momentum", "momentum_form", "nesterov", "l1", "l2", "schedule", "decay", "step_size", "gamma",
        "lr_min", "val", "patience",
    )
}


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive thread count or 'auto'")
    return n


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of sizes, e.g. 70,30"
        ) from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one hidden layer size, e.g. 70,30")
    return sizes


def config_from_args(args: argparse.Namespace):
    from ..mlp.config import preset

    overrides: dict[str, Any] = {}
    for arg, field in _FIELDS.items():
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    if overrides.get("momentum_form") == "seed" and "nesterov" not in overrides:
        overrides["nesterov"] = False
    return preset(args.preset, **overrides)


def run_train(args: argparse.Namespace) -> int:
    from ..mlp.layout import describe_layout
    from ..mlp.run import train_on_dataset

    config = config_from_args(args)
    out = args.out or Path("runs") / f"mlp-{args.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: already exists; choose another --out or add --overwrite")
    tensorboard_dir = log_dir(args, out)
    from tqdm.auto import tqdm

    dataset = load_dataset_from_args(args)  # before the bar, so its source line is not drawn over
    train = train_on_dataset
    if tensorboard_dir is not None:
        from ..tensorboard_log import train_mlp_logged

        train = partial(train_mlp_logged, tensorboard_dir)
    bar = tqdm(total=config.epochs, unit="epoch", desc="train mlp", disable=args.no_progress, file=sys.stderr)

    def on_epoch(row: dict[str, Any]) -> None:
        shown = {"loss": f"{row['loss']:.4f}", "train": f"{row['train_accuracy']:.4f}"}
        if "test_accuracy" in row:
            shown["test"] = f"{row['test_accuracy']:.4f}"
        if "val_accuracy" in row:
            shown["val"] = f"{row['val_accuracy']:.4f}"
        bar.set_postfix(shown, refresh=False)
        bar.update(1)

    t0 = time.perf_counter()
    earlier = out.exists()
    try:
        try:
            result = train(
                config, dataset, out=out, overwrite=args.overwrite, callback=on_epoch,
                profile=args.profile, preset=args.preset, threads=args.threads,
            )
        finally:
            bar.close()
    except KeyboardInterrupt:
        # the run is written whole at the end (runs.write_run), so an interruption saves nothing
        kept = f"; {out} still holds its earlier run" if earlier else ""
        info(f"mnistlab: interrupted; this training was not saved{kept}")
        return 130
    seconds = time.perf_counter() - t0
    if args.profile:
        print(profile_table(result.history))
        print(describe_layout(result.input_layout))
        for epoch, threads, many, one in result.thread_choices:
            print(
                f"threads from epoch {epoch + 1}: {threads} ({many:.2f} us per image with all, "
                f"{one:.2f} with one)"
            )
    epochs = len(result.history)
    print(
        f"test accuracy {100 * result.test_accuracy:.2f}% after {counted(epochs, 'epoch')} "
        f"({seconds:.1f} s{_kept_epoch(result.run_dir, epochs)}); run saved in {result.run_dir}"
    )
    if note := chance_note(result.test_accuracy, len(dataset.class_names)):
        info(note)
    return 0


def _kept_epoch(run_dir: Path, epochs: int) -> str:
    """', ...' naming the epoch whose weights early stopping kept, when that is not the last one."""
    from ..runs import read_manifest

    metrics = read_manifest(run_dir)["metrics"]
    best = metrics.get("best_epoch")
    if best is None or best == epochs:
        return ""
    stopped = "stopped early; " if metrics.get("stopped_early") else ""
    return f", {stopped}weights of epoch {best}, the best validation accuracy"


def profile_table(history: list[dict[str, Any]]) -> str:
    """Seconds per phase of the batch loop, summed over the epochs."""
    from ..mlp.profile import PHASES

    totals = {p: sum(row.get(f"time_{p}", 0.0) for row in history) for p in PHASES}
    whole = sum(totals.values()) or 1.0
    lines = ["phase       seconds   share"]
    lines += [f"{p:<10} {s:8.3f} {100 * s / whole:6.1f}%" for p, s in totals.items()]
    lines.append(f"{'total':<10} {whole:8.3f}")
    return "\n".join(lines)
