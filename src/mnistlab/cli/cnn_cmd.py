"""`mnistlab train cnn` and `mnistlab summary`: the PyTorch CNN from the command line.

torch is imported only when training actually starts, so `mnistlab --help` and `summary` stay fast.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from ..extras import needs_extras
from .common import add_dataset_options, info
from .tensorboard_cmd import add_tensorboard_option, log_dir

# CLI option -> TrainConfig field (None values mean "not given": the preset or stored run decides).
_FIELDS = (
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "epochs", "batch_size", "seed",
    "val", "augment", "label_smoothing", "init", "preprocess", "device", "amp", "channels_last", "compile",
    "cuda_graphs",
    "threads",
)


def register_train(train_sub: argparse._SubParsersAction) -> None:
    from ..cnn.spec import PRESETS

    p = train_sub.add_parser(
        "cnn",
        help="train the PyTorch CNN from a layer spec",
        description="Train a CNN built from a spec or preset and write a run directory "
        "(a checkpoint every epoch; Ctrl-C saves and can be resumed). "
        "Options given explicitly override the preset's recipe. "
        f"Presets: {'; '.join(f'{k}: {v.about}' for k, v in PRESETS.items())}.",
    )
    p.add_argument(
        "--spec",
        help="preset name, one-line layers (conv:32:3,pool:2,...,output:10) or a .toml/.json file "
        "(default seed)",
    )
    add_dataset_options(p, default=None)
    p.add_argument("--out", type=Path, help="run directory to write (default runs/cnn-DATASET-TIMESTAMP)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--resume", type=Path, metavar="RUN",
        help="continue an interrupted run (or extend it with a larger --epochs)",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="with --resume RUN: restart RUN from its saved initial weights "
        "(new settings allowed; --out DIR to branch)",
    )
    add_tensorboard_option(p)
    add_recipe_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options that set TrainConfig fields, shared with `mnistlab sweep cnn`."""
    t = p.add_argument_group("training")
    t.add_argument("--optimizer", help="rmsprop (Keras settings: rho 0.9, eps 1e-7), sgd, adam, adamw")
    t.add_argument("--lr", type=float, help="(peak) learning rate")
    t.add_argument("--momentum", type=float, help="momentum for sgd or rmsprop")
    t.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum (sgd)"
    )
    t.add_argument("--weight-decay", type=float, help="L2 penalty (decoupled weight decay for adamw)")
    t.add_argument(
        "--schedule",
        help="constant, step[:EVERY[:GAMMA]], exponential[:GAMMA], cosine, onecycle, "
        "plateau[:PATIENCE[:FACTOR]]",
    )
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int, help="seed for initialization, shuffling, dropout and augmentation")
    t.add_argument("--val", type=int, help="hold out the last N training images for validation")
    t.add_argument("--augment", type=int, metavar="PIXELS", help="random shifts of up to PIXELS (0: none)")
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--init", help="glorot (Keras' default) or default (torch's)")
    t.add_argument("--preprocess", help="unit (pixels / 255), standard or none")
    h = p.add_argument_group("hardware")
    h.add_argument("--device", help="auto, cpu, cuda or mps (default auto)")
    h.add_argument("--amp", help="mixed precision: auto (bf16 on GPU, and on CPUs with native bf16), on, off")
    h.add_argument("--channels-last", help="channels-last memory format: auto (with amp), on, off")
    h.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the network"
    )
    h.add_argument("--cuda-graphs", help="capture the training step as a CUDA graph: auto, on, off")
    h.add_argument("--threads", type=int, help="CPU threads (0: torch's default)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="Keras-style table of a CNN's layers (a run or a spec)",
        description="Print name, type, output shape and parameters of each layer of a CNN run or spec, "
        "with totals.",
    )
    p.add_argument("run", nargs="?", type=Path, help="a CNN run directory")
    p.add_argument(
        "--spec", help="a preset name, one-line layers or a .toml/.json spec file instead of a run"
    )
    p.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from ..cnn.spec import parse_spec, summary_table

    if (args.run is None) == (args.spec is None):
        raise ConfigError("give either a run directory or --spec SPEC|PRESET (not both)")
    if args.spec is not None:
        print(summary_table(parse_spec(args.spec), f"spec: {args.spec}"))
        return 0
    from ..runs import read_manifest

    manifest = read_manifest(args.run)
    if manifest["kind"] != "cnn" or "spec" not in manifest.get("config", {}):
        raise RunError(
            f"{args.run}: a {manifest['kind']} run; summary covers CNN runs "
            "(for any run: mnistlab layers RUN)"
        )
    from ..importers import original_names

    spec = parse_spec(manifest["config"]["spec"])
    title = (f"run: {args.run} ({manifest['config'].get('spec_name', '')}, {manifest.get('state', '?')}, "
             f"{manifest.get('epochs_done', '?')} epochs)")
    print(summary_table(spec, title, sources=original_names(manifest)))
    acc = manifest.get("metrics", {}).get("test_accuracy")
    if acc is not None:
        print(f"Test accuracy: {100 * acc:.2f}%")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}


def run_train(args: argparse.Namespace) -> int:
    with needs_extras("mnistlab train cnn"):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from ..data import load_dataset

    if args.reset and args.resume is None:
        raise ConfigError("--reset needs --resume RUN (the run whose initial weights to restart from)")
    overrides = _overrides(args)
    progress = not args.no_progress
    t0 = time.perf_counter()
    if args.resume is not None and args.tensorboard is not None:
        raise ConfigError("--tensorboard logs fresh training runs; leave it out with --resume")
    if args.resume is not None:
        from ..runs import read_manifest

        stored = read_manifest(args.resume)
        dataset_name = args.dataset or stored.get("dataset", "mnist")
        dataset = load_dataset(dataset_name, data_dir=args.data_dir, on_source=info)
        from ..cnn.training import resume

        result = resume(args.resume, dataset, reset=args.reset, out=args.out, progress=progress,
                        spec=args.spec, **overrides)
    else:
        from ..cnn.spec import parse_spec

        spec = args.spec or "seed"
        parsed = parse_spec(spec)  # a bad spec fails before the data loads
        dataset_name = args.dataset or "mnist"
        out = args.out or Path("runs") / f"cnn-{dataset_name}-{datetime.now():%Y%m%d-%H%M%S}"
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out}: already exists; choose another --out, add --overwrite, or --resume it")
        tensorboard_dir = log_dir(args, out)
        from ..cnn.training import Trainer, resolve_config

        config = resolve_config(spec, dataset=dataset_name, **overrides)
        dataset = load_dataset(dataset_name, data_dir=args.data_dir, on_source=info)
        if Path(spec).suffix.lower() in (".toml", ".json"):
            config.spec = parsed.to_string()  # the run must not depend on the file staying around
        trainer = Trainer(config, dataset, out, progress=progress, overwrite=args.overwrite)
        info(
            f"training {config.spec} on {dataset_name} ({trainer.levers.device}, amp "
            f"{trainer.levers.amp_dtype or 'off'}, channels_last "
            f"{'on' if trainer.levers.channels_last else 'off'}, "
            + (
                f"batches split across {trainer.levers.data_parallel} threads"
                if trainer.levers.data_parallel > 1
                else f"{trainer.levers.threads} thread(s)"
            )
            + f") -> {out}"
        )
        if tensorboard_dir is None:
            result = trainer.run()
        else:
            from ..tensorboard_log import run_cnn_logged

            result = run_cnn_logged(trainer, tensorboard_dir)
    seconds = time.perf_counter() - t0
    if result.state == "interrupted":
        info(
            f"mnistlab: interrupted; progress saved in {result.run_dir}; continue with: mnistlab train cnn "
            f"--resume {result.run_dir}"
        )
        return 130
    last = result.history[-1]
    print(
        f"test accuracy {100 * last['test_accuracy']:.2f}% after {len(result.history)} epochs "
        f"({sum(h['train_seconds'] for h in result.history):.1f} s training, {seconds:.1f} s total); run "
        f"saved in {result.run_dir}"
    )
    return 0
