"""Small helpers shared by the CLI modules: consistent options and output locations."""

from __future__ import annotations

import argparse
import errno
import io
import socket
import sys
from pathlib import Path

from ..errors import ConfigError
from ..numbers import parse_number_list


def add_dataset_options(
    parser: argparse.ArgumentParser, default: str | None = "mnist",
    help: str = "dataset name (default: mnist)",
) -> None:
    """--dataset and --data-dir. ``default=None`` leaves --dataset unset when not given (a resumed
    run then uses the dataset it was trained on)."""
    from ..data import DATASETS

    parser.add_argument("--dataset", default=default, choices=sorted(DATASETS), help=help)
    parser.add_argument(
        "--data-dir", metavar="DIR", help="a directory with the four IDX files (or set MNISTLAB_DATA_DIR)"
    )


def add_split_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test", choices=["train", "test"])


def add_run_options(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    """RUN, and where its images come from: --dataset/--data-dir (default: the run's own) and --split."""
    parser.add_argument("run", help="run directory")
    add_dataset_options(parser, default=None, help="dataset (default: the one the run was trained on)")
    if split:
        add_split_option(parser)


def add_new_run_options(parser: argparse.ArgumentParser, engine: str) -> None:
    """--out and --overwrite of the commands that train a new run."""
    parser.add_argument(
        "--out", type=Path, help=f"run directory to write (default runs/{engine}-DATASET-TIMESTAMP)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def load_dataset_from_args(args: argparse.Namespace, *, force: bool = False):
    from ..data import load_dataset

    return load_dataset(args.dataset, data_dir=args.data_dir, force=force, on_source=lambda line: info(line))


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port for a server to listen on, or one ConfigError saying why
    not; without it uvicorn and TensorBoard answer a busy port with their own log lines."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is in use (another server listens there); stop it or choose another "
                "--port (0 picks a free one)"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port"
        ) from None
    return sock


def info(line: str) -> None:
    """Status lines go to stderr so stdout stays clean for results."""
    print(line, file=sys.stderr)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure atomically; a refused write is one line that says the run is unchanged."""
    from ..safe_write import atomic_write_bytes, guard

    path = Path(path)
    kind = path.suffix[1:].lower() or "png"
    if kind not in fig.canvas.get_supported_filetypes():
        raise ConfigError(f"{path}: matplotlib cannot write .{kind} figures; use .png, .svg or .pdf")
    buf = io.BytesIO()
    fig.savefig(buf, format=kind, dpi=dpi, bbox_inches="tight")
    with guard(path, "the figure", "the run and the figures already written are unchanged", "another --out"):
        atomic_write_bytes(path, buf.getvalue())
    return path


def counted(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def chance_note(accuracy: float, classes: int) -> str | None:
    """A note for a training that ended no better than guessing (a finite loss hides this: nothing
    diverged, the network just never learned), with what usually fixes it; None otherwise."""
    if accuracy >= 2 / classes:
        return None
    return (
        f"mnistlab: note: test accuracy {100 * accuracy:.2f}% is about chance for {classes} classes: the "
        "network did not learn; a lower --lr (or a different --init) usually helps"
    )


def positive_count(text: str) -> int:
    """argparse type of options that count things (--n, --top, --cols, ...): a whole number >= 1, so
    that 0 or -1 is refused by name rather than sliced into an empty or shortened result."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give 1 or more")
    return value


def parse_indices(values: list[str] | None) -> list[int]:
    """--index 3 --index 5,7 --index 10-12 -> [3, 5, 7, 10, 11, 12]."""
    return parse_number_list(values or [])
