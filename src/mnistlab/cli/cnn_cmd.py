"""`mnistlab train cnn` and `mnistlab summary`: the PyTorch CNN from the command line.

torch is imported only when training actually starts, so `mnistlab --help` and `summary` stay fast.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from ..extras import needs_extras
from .common import add_dataset_options, add_new_run_options, chance_note, counted, info
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
    add_new_run_options(p, "cnn")
    p.add_argument(
        "--resume", type=Path, metavar="RUN",
        help="continue an interrupted run (or extend it with a larger --epochs)",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="with --resume RUN: restart RUN from its saved initial weights "
        "(new settings allowed; --out DIR to branch, --overwrite to restart RUN in place)",
    )
    add_tensorboard_option(p)
    add_recipe_options(p)
    p.add_argument_group("processes").add_argument(
        "--nproc", type=int, metavar="N",
        help="train as N processes on this machine (DDP through torch's elastic launcher; --batch-size "
        "stays the global batch; needs --out). Many machines: docs/distributed.md",
    )
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
    h.add_argument("--threads", type=int, help="CPU threads (0: torch's default; per process with --nproc)")


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
        return _run_train(args)


def _under_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _run_train(args: argparse.Namespace) -> int:
    if args.reset and args.resume is None:
        raise ConfigError("--reset needs --resume RUN (the run whose initial weights to restart from)")
    if args.nproc is not None:
        if _under_torchrun():
            raise ConfigError("--nproc inside torchrun: torchrun already started the processes; drop --nproc")
        if args.out is None:
            raise ConfigError(
                "--nproc needs --out DIR (every rank, and a rerun that resumes, must name the same run)"
            )
        from ..cnn.launch import launch

        return launch(args.nproc, _without_nproc(list(args.argv)))
    if not _under_torchrun():
        return _train(args, is_main=True)
    if args.out is None and args.resume is None:
        raise ConfigError(
            "a distributed run needs --out DIR (every rank, and a restart that resumes, must name the "
            "same run)"
        )
    from ..cnn import distributed

    ranks = distributed.join()
    try:
        with distributed.lost_ranks():
            code = _train(args, is_main=ranks.is_main)
            distributed.all_arrived()
        return code
    finally:
        distributed.leave()


def _unfinished_run(out: Path) -> bool:
    """Whether ``out`` holds a CNN run that stopped before its last epoch (read on rank 0)."""
    from ..cnn import distributed
    from ..runs import read_manifest

    def state() -> str | None:
        if not (out / "run.json").is_file():
            return None
        manifest = read_manifest(out)
        return manifest.get("state") if manifest.get("kind") == "cnn" else None

    return distributed.from_main(state) in ("partial", "interrupted")


def _progress(manifest: dict[str, Any]) -> str:
    """'3 epochs', '1 epoch and 40 steps': how far a stored CNN run has trained."""
    epochs, steps = manifest.get("epochs_done", 0), manifest.get("step_in_epoch", 0)
    done = counted(epochs, "epoch")
    return done + (f" and {steps} steps" if steps else "")


def _train(args: argparse.Namespace, *, is_main: bool) -> int:
    from ..data import load_dataset

    note = info if is_main else (lambda line: None)
    overrides = _overrides(args)
    progress = not args.no_progress
    t0 = time.perf_counter()
    if args.resume is not None and args.tensorboard is not None:
        raise ConfigError("--tensorboard logs fresh training runs; leave it out with --resume")
    resume_run = args.resume
    if resume_run is None and _under_torchrun() and args.out is not None:
        # A distributed job reruns the same command after a failure (by hand, or torchrun's
        # --max-restarts): an unfinished run at --out continues; --overwrite starts over only on
        # the first attempt.
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if not (args.overwrite and first_attempt) and _unfinished_run(args.out):
            note(f"{args.out}: an unfinished run; continuing it")
            resume_run = args.out
    if resume_run is not None:
        from ..cnn import distributed
        from ..runs import read_manifest

        stored = distributed.from_main(read_manifest, resume_run)
        trained = stored.get("epochs_done", 0) or stored.get("step_in_epoch", 0)
        if args.reset and args.out is None and trained and not args.overwrite:
            raise ConfigError(
                f"{resume_run}: --reset in place would replace its {_progress(stored)} of training; "
                "branch with --out DIR, or add --overwrite to restart it in place"
            )
        dataset_name = args.dataset or stored.get("dataset", "mnist")
        dataset = distributed.local_main_first(
            lambda: load_dataset(dataset_name, data_dir=args.data_dir, on_source=note))
        from ..cnn.training import resume

        out = None if resume_run == args.out and not args.reset else args.out
        result = resume(resume_run, dataset, reset=args.reset, out=out, progress=progress,
                        spec=args.spec, **overrides)
    else:
        from ..cnn.spec import parse_spec

        spec = args.spec or "seed"
        parsed = parse_spec(spec)  # a bad spec fails before the data loads
        dataset_name = args.dataset or "mnist"
        out = args.out or Path("runs") / f"cnn-{dataset_name}-{datetime.now():%Y%m%d-%H%M%S}"
        if is_main and out.exists() and not args.overwrite:
            raise ConfigError(f"{out}: already exists; choose another --out, add --overwrite, or --resume it")
        tensorboard_dir = log_dir(args, out) if is_main else None  # one log, by the main rank
        from ..cnn import distributed
        from ..cnn.training import Trainer, resolve_config

        config = resolve_config(spec, dataset=dataset_name, **overrides)
        dataset = distributed.local_main_first(
            lambda: load_dataset(dataset_name, data_dir=args.data_dir, on_source=note))
        if Path(spec).suffix.lower() in (".toml", ".json"):
            config.spec = parsed.to_string()  # the run must not depend on the file staying around
        trainer = Trainer(config, dataset, out, progress=progress, overwrite=args.overwrite)
        levers = trainer.levers
        ranks = f"{levers.world_size} ranks x " if levers.world_size > 1 else ""
        note(
            f"training {config.spec} on {dataset_name} ({levers.device}, amp "
            f"{levers.amp_dtype or 'off'}, channels_last "
            f"{'on' if levers.channels_last else 'off'}, "
            + (
                f"batches split across {levers.data_parallel} threads"
                if levers.data_parallel > 1
                else f"{ranks}{levers.threads} thread(s)"
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
        again = f"mnistlab train cnn --resume {result.run_dir}"
        if _under_torchrun():
            again = "rerun the same command"
        note(f"mnistlab: interrupted; progress saved in {result.run_dir}; continue with: {again}")
        return 130
    if not is_main:
        return 0
    last, epochs = result.history[-1], len(result.history)
    training = sum(h["train_seconds"] for h in result.history)
    # a resumed run's history holds the training of earlier commands too: say so, or it can exceed the total
    times = (
        f"{training:.1f} s training, {seconds:.1f} s total" if resume_run is None
        else f"{training:.1f} s training over the whole run, {seconds:.1f} s for this command"
    )
    print(
        f"test accuracy {100 * last['test_accuracy']:.2f}% after {counted(epochs, 'epoch')} "
        f"({times}); run saved in {result.run_dir}"
    )
    if chance := chance_note(last["test_accuracy"], len(dataset.class_names)):
        note(chance)
    return 0
