"""`--tensorboard DIR` for the training commands, and `mnistlab tensorboard DIR` to view the logs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MnistlabError
from .common import bound_socket


def add_tensorboard_option(
    parser: argparse.ArgumentParser,
    help: str = "also write TensorBoard logs, to DIR/RUN_NAME (view them: mnistlab tensorboard DIR)",
) -> None:
    parser.add_argument("--tensorboard", type=Path, metavar="DIR", help=help)


def log_dir(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """DIR/RUN_NAME, checked writable before any data loads or training starts; None without the option."""
    if getattr(args, "tensorboard", None) is None:
        return None
    from ..tensorboard_log import check_log_dir

    return check_log_dir(args.tensorboard / Path(run_dir).name)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tensorboard",
        help="view the logs written with --tensorboard DIR in TensorBoard",
        description="Start TensorBoard on DIR (the one given to --tensorboard; every run in it shows up).",
    )
    p.add_argument("logdir", type=Path, metavar="DIR")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(func=run_tensorboard)


def run_tensorboard(args: argparse.Namespace) -> int:
    from ..extras import require

    require("tensorboard", "mnistlab tensorboard")
    if not args.logdir.is_dir():
        raise MnistlabError(f"{args.logdir}: no such directory; pass the DIR given to --tensorboard")
    if not 0 <= args.port <= 65535:
        raise MnistlabError(f"--port {args.port} must be between 0 and 65535")
    bound_socket(args.host, args.port).close()  # a busy port: one line here, not TensorBoard's log
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir),
               "--host", args.host, "--port", str(args.port)]  # fmt: skip
    # Replace this process rather than start a child: a SIGTERM to `mnistlab tensorboard` then stops
    # TensorBoard itself instead of leaving it serving, orphaned, after its parent is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached: execv only returns by raising
