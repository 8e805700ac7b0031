"""`mnistlab sweep mlp|cnn` (a worker of a study) and `mnistlab sweep show` (its results)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MnistlabError
from .common import add_dataset_options, info, load_dataset_from_args
from .tensorboard_cmd import add_tensorboard_option


def register(sub: argparse._SubParsersAction) -> None:
    from . import cnn_cmd, mlp_cmd

    p = sub.add_parser(
        "sweep",
        help="hyperparameter search on Optuna (validation accuracy; the test set is left alone)",
        description="Search hyperparameters: every worker started with the same --study and --storage shares "
        "one study until it holds --trials finished trials. See docs/sweeps.md.",
    )
    sweep_sub = p.add_subparsers(dest="sweep_command", metavar="ENGINE|show", parser_class=type(p))
    p.set_defaults(func=lambda args: _usage(p))
    for name, about in (("mlp", "sweep the NumPy MLP"), ("cnn", "sweep the PyTorch CNN")):
        q = sweep_sub.add_parser(
            name, help=about, description=f"{about}; options not in the space stay fixed."
        )
        _add_worker_options(q)
        add_tensorboard_option(q, "also write TensorBoard logs of each trial, to DIR/STUDY/trial-NNNN")
        if name == "mlp":
            from ..mlp.config import PRESETS

            q.add_argument(
                "--preset", choices=tuple(PRESETS), default="default", help="starting configuration"
            )
            mlp_cmd.add_config_options(q)
        else:
            q.add_argument("--spec", help="preset name, one-line layers or a .toml/.json file (default seed)")
            cnn_cmd.add_recipe_options(q)
        q.set_defaults(func=run_sweep, engine_name=name)
    s = sweep_sub.add_parser(
        "show",
        help="a study's trials, the best trial's test accuracy and figures",
        description="Table of trials (best first), the best trial's test accuracy "
        "(evaluated once, after the sweep) and PNG figures.",
    )
    s.add_argument("study", metavar="NAME")
    _add_place_options(s)
    s.add_argument("--out", type=Path, help="folder for the figures (default RUNS/sweeps/NAME/figures)")
    s.add_argument("--no-test", action="store_true", help="skip the best trial's test accuracy")
    s.set_defaults(func=run_show)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _add_place_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage", metavar="URL",
        help="Optuna storage (default sqlite:///RUNS/sweeps.db; "
        "postgresql://USER:PASSWORD@HOST:PORT/DB to share a study across machines)",
    )
    p.add_argument(
        "--runs", type=Path, default=Path("runs"), metavar="DIR",
        help="runs directory; trials go to RUNS/sweeps/NAME/trial-NNNN (default runs)",
    )


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    from ..sweep.study import HEARTBEAT_S, PRUNERS

    w = p.add_argument_group("sweep")
    w.add_argument(
        "--study", required=True, metavar="NAME", help="study name (workers with the same name share it)"
    )
    w.add_argument(
        "--trials", required=True, type=int, metavar="N",
        help="finished trials the study should hold, over all workers",
    )
    w.add_argument(
        "--space", metavar="SPEC",
        help="search space, e.g. 'lr=log:0.01:1 activation=choice:relu,tanh' (default: the engine's)",
    )
    w.add_argument(
        "--space-file", type=Path, metavar="FILE",
        help="the search space from a file (one term per line, # comments)",
    )
    _add_place_options(p)
    w.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds (this worker)")
    w.add_argument(
        "--prune", action=argparse.BooleanOptionalAction, default=True,
        help="stop unpromising trials early on their per-epoch validation accuracy (default on)",
    )
    w.add_argument("--pruner", choices=PRUNERS, default="median", help="Optuna pruner (default median)")
    w.add_argument(
        "--train-size", type=int, metavar="N", help="use the first N training images (quick sweeps)"
    )
    w.add_argument(
        "--heartbeat", type=int, default=HEARTBEAT_S, metavar="S",
        help=f"seconds between a trial's heartbeats; a trial silent for twice that is failed and retried "
        f"(default {HEARTBEAT_S})",
    )
    add_dataset_options(p)


def default_storage(runs: Path) -> str:
    from ..sweep.study import default_database

    return f"sqlite:///{default_database(runs)}"


def run_sweep(args: argparse.Namespace) -> int:
    from ..sweep import ENGINES, Sweep, open_storage, parse_space, run_worker, without_test_split
    from ..sweep.engines import DEFAULT_VAL
    from ..sweep.study import counts, finished

    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials} must be at least 1")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat {args.heartbeat} must be at least 1 second")
    if args.space and args.space_file:
        raise ConfigError("give --space or --space-file, not both")
    engine = ENGINES[args.engine_name]
    if args.val is None:
        args.val = DEFAULT_VAL
    if args.val < 1:
        raise ConfigError(
            "a sweep needs a validation split to choose by; give --val N with N >= 1 (default 10000)"
        )
    base, given = _base_config(args)
    params = engine.params(base)
    space = parse_space(_space_text(args, engine), params)
    both = sorted(d.name for d in space if d.name in given or engine.fields.get(d.name) in given)
    if both:
        raise ConfigError(f"{', '.join(both)}: both fixed by an option and searched in the space; drop one")
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.ERROR)  # the worker reports each trial itself, in one line
    storage_url = args.storage or default_storage(args.runs)
    storage = open_storage(storage_url, heartbeat=args.heartbeat)  # a bad URL fails before the data loads
    if args.tensorboard is not None:
        from ..tensorboard_log import check_log_dir

        check_log_dir(args.tensorboard)  # as a bad URL: before the data loads
    dataset = without_test_split(load_dataset_from_args(args), args.train_size)
    if base.val >= len(dataset.train_labels):
        raise ConfigError(
            f"--val {base.val} leaves no training images out of {len(dataset.train_labels)}; lower it"
        )
    sweep = Sweep(
        args.study,
        engine,
        space,
        params,
        base,
        dataset,
        args.runs,
        args.trials,
        prune=args.prune,
        pruner=args.pruner,
        timeout=args.timeout,
        threads=getattr(args, "threads", "auto"),
        tensorboard=args.tensorboard,
        say=info,
    )
    info(
        f"sweep {args.study!r} ({engine.name}, {args.trials} trials in all) on {_redact(storage_url)}; "
        f"space: {' '.join(d.term for d in space)}"
    )
    try:
        study = run_worker(sweep, storage)
    except KeyboardInterrupt:
        info(
            "mnistlab: interrupted; a trial this worker was running is marked failed. "
            "Rerun the same command to continue the study."
        )
        return 130
    c = counts(study)
    print(
        f"study {args.study!r}: {finished(c)} of {args.trials} trials finished "
        f"({', '.join(f'{v} {k}' for k, v in sorted(c.items()))}); best validation accuracy "
        + (f"{study.best_value:.4f} (trial {study.best_trial.number})" if c.get("complete") else "-")
        + f"; see: mnistlab sweep show {args.study}"
        + ("" if args.storage is None else " --storage URL")
    )
    return 0


def _redact(url: str) -> str:
    from ..sweep.study import redact

    return redact(url)


def _space_text(args: argparse.Namespace, engine: Any) -> str:
    if args.space_file is not None:
        try:
            return args.space_file.read_text()
        except OSError as exc:
            raise ConfigError(f"--space-file {args.space_file}: cannot read it ({exc.strerror})") from None
    return args.space or engine.default_space


def _base_config(args: argparse.Namespace) -> tuple[Any, set[str]]:
    """The engine's config with the fixed options, and the config fields those options set."""
    if args.engine_name == "mlp":
        from .mlp_cmd import _FIELDS, config_from_args

        given = {field for arg, field in _FIELDS.items() if getattr(args, arg, None) is not None}
        return config_from_args(args), given - {"val"}
    from ..cnn.training import resolve_config
    from .cnn_cmd import _overrides

    overrides = _overrides(args)
    config = resolve_config(args.spec or "seed", dataset=args.dataset or "mnist", **overrides)
    return config, set(overrides) - {"val"} | ({"spec"} if args.spec else set())


def run_show(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..extras import require
    from ..sweep.report import best_test_accuracy, load_study, table_text, trial_rows, write_figures
    from ..sweep.study import default_database, open_storage, recipe_of

    for module in ("optuna", "sqlalchemy"):  # what opening a storage needs: a missing extra comes first
        require(module, "mnistlab sweep show")
    if args.storage is None and not default_database(args.runs).is_file():
        # opening the default storage would create an empty database as a side effect of a look
        raise ConfigError(
            f"no sweeps in {args.runs} ({default_database(args.runs)} does not exist); start one with "
            "`mnistlab sweep mlp --study NAME --trials N`, or give the --runs or --storage it used"
        )
    storage = open_storage(args.storage or default_storage(args.runs), heartbeat=None)
    study = load_study(args.study, storage)
    rows = trial_rows(study)
    recipe = recipe_of(study)
    total = recipe.get("trials")
    print(
        f"study {args.study!r} ({recipe.get('engine', '?')}): {len(rows)} trials"
        + (f", {total} wanted" if total else "")
        + f"; space: {recipe.get('space', '?')}"
    )
    print(table_text(rows))
    if not args.no_test:
        try:
            best = best_test_accuracy(study, args.runs, lambda name: load_dataset(name, on_source=info))
        except MnistlabError as exc:
            info(f"mnistlab: note: {exc}")
            best = None
        if best is not None:
            print(
                f"best trial {best['trial']}: validation accuracy {best['val_accuracy']:.4f} "
                "(what the sweep chose by); "
                f"TEST accuracy {best['test_accuracy']:.4f} on {best['test_images']} test images "
                f"(evaluated once, after the sweep; run {args.runs / best['run']})"
            )
    out = args.out or args.runs / "sweeps" / args.study / "figures"
    for name, result in write_figures(study, out).items():
        print(f"figure {name}: {result}")
    return 0
