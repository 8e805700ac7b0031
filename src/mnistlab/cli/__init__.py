"""The `mnistlab` command: a thin shell over library calls.

``main(argv) -> int``: 0 on success, 2 on a usage error, 1 on any other error, 130 when interrupted,
141 (128 + SIGPIPE, as a shell reports a Unix tool that a closed pipe ended) when the reader of the
output went away (``mnistlab summary RUN | head -1``), quietly. Known errors (MnistlabError) become
one line on stderr; a traceback is shown only with ``--debug``. In a rank of a distributed job
``main`` does not return: the process ends with that status once the command left its process group.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import MnistlabError
from ..extras import missing_extra, optional_module

# Each module adds its subcommands with register(subparsers); `train` engines register into the
# `train` group with register_train(train_subparsers). Keep one module per area to keep merges easy.
COMMAND_MODULES = (
    "data_cmd", "mlp_cmd", "cnn_cmd", "run_cmd", "inspect_cmd", "attribute_cmd", "web_cmd", "import_cmd",
    "sweep_cmd", "tensorboard_cmd",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits on its own; we want a return code
        raise _UsageError(f"{self.prog}: {message} (see --help)")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="mnistlab", description="Train small networks on MNIST-style images and look inside them."
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = sub.add_parser("train", help="train a model and write a run directory")
    train_sub = train.add_subparsers(dest="engine", metavar="ENGINE", parser_class=_Parser)
    train.set_defaults(func=lambda args: _missing_sub(train, "an engine"))
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # that area is not built yet
            raise
        if hasattr(module, "register"):
            module.register(sub)
        if hasattr(module, "register_train"):
            module.register_train(train_sub)
    return parser


def _command_name(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    return " ".join(["mnistlab", *words[: 2 if words[:1] in (["train"], ["data"]) else 1]])


def _missing_sub(parser: argparse.ArgumentParser, what: str) -> int:
    raise _UsageError(f"{parser.prog}: choose {what} (see --help)")


CLOSED_OUTPUT = 141


def main(argv: Sequence[str] | None = None) -> int:
    left_before = _left_group()
    try:
        code = _main(argv)
    except BaseException:
        if _left_group() == left_before:
            raise
        traceback.print_exc()  # --debug: the traceback, then the end of the rank below
        code = 1
    return end_rank_process(code, left_before)


def _left_group() -> bool:
    """Whether this process has left a process group (only a rank of a distributed job has)."""
    distributed = sys.modules.get("mnistlab.cnn.distributed")  # never imports torch itself
    return distributed is not None and distributed.left_group


def end_rank_process(code: int, left_before: bool = False) -> int:
    """``code``, or, when the process has left a process group (and had not at ``left_before``),
    the end of the process with status ``code`` (a torchrun worker at the end of its command, this
    CLI's or a benchmark's): what it wrote is flushed and the interpreter does not finalize, because
    gloo's worker threads stay to the end of the process and one that takes the GIL while the
    interpreter finalizes aborts the process (distributed.left_group)."""
    if left_before or not _left_group():
        return code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not as a complaint at interpreter exit
        return code
    except BrokenPipeError:  # the reader of stdout or stderr went away: end quietly, as Unix tools do
        for stream in (sys.stdout, sys.stderr):
            if _reader_gone(stream):  # what is still buffered would fail again at exit: let it go nowhere
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return CLOSED_OUTPUT


def _reader_gone(stream) -> bool:
    """Whether ``stream`` writes to a pipe (or socket) whose reading end is closed."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: an in-process caller's buffer
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported unasked
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def _run(argv: list[str]) -> int:
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = argv  # what `train cnn --nproc N` hands to each rank
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version exit 0 through argparse
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("mnistlab: interrupted", file=sys.stderr)
        return 130
    except MnistlabError as exc:
        if debug:
            raise
        print(f"mnistlab: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected error: still one line unless --debug
        if isinstance(exc, BrokenPipeError) and (_reader_gone(sys.stdout) or _reader_gone(sys.stderr)):
            raise  # not an error of mnistlab's: main ends quietly
        if debug:
            raise
        module = optional_module(exc)
        if module is not None:  # an optional module that no library entry point named: still the extra's line
            print(f"mnistlab: error: {missing_extra(module, _command_name(argv))}", file=sys.stderr)
            return 1
        print(
            f"mnistlab: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return 1
