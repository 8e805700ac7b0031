"""``mnistlab train cnn --nproc N``: torch's own elastic launcher (what ``torchrun --standalone``
runs) starting N copies of the same command on this machine, each one rank of the job.

A failed rank ends the job: the launcher stops the others and returns one line naming the rank
and how it ended, instead of torchrun's report; the workers' own output passes through.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, RunError
from .distributed import LAUNCHER_REPORTS, LOST_PEER_STATUS


def _entry() -> list[str]:
    """How the workers start the same program: ``-m mnistlab``, or the script that called the CLI."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = sys.argv[0] if sys.argv else ""
    if (spec is not None and spec.name == "mnistlab.__main__") or not script.endswith(".py"):
        return ["--module", "mnistlab"]
    return [script]


def launch(nproc: int, argv: Sequence[str], *, max_restarts: int = 0) -> int:
    """Run ``mnistlab`` with ``argv`` as ``nproc`` ranks on this machine; the exit status of the job.

    Returns 130 when interrupted (the ranks saved the run, as one process does on Ctrl-C).
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be a positive number of processes")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs each worker it starts and stops; the one line below says what matters.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_REPORTS] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each rank sets its own share of the cores
    args = parse_args(
        [
            "--standalone",
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            *_entry(),
            *argv,
        ]
    )
    try:
        run(args)
    except SignalException as exc:
        if exc.sigval in (signal.SIGINT, signal.SIGTERM):
            return 130
        raise RunError(f"the job stopped on {exc.sigval.name}") from None
    except ChildFailedError as exc:
        rank, failure = root_failure(exc)
        if failure.exitcode > 0 and failure.exitcode != LOST_PEER_STATUS:
            return failure.exitcode  # the rank said why itself (a bad option, a Ctrl-C: 130)
        how = (
            f"was killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else "lost contact with the other ranks"
        )
        raise RunError(
            f"rank {rank} {how}; the job stopped (the run keeps its last finished epoch: rerun the same "
            "command to resume)"
        ) from None
    finally:
        os.environ.pop(LAUNCHER_REPORTS, None)
    return 0


def root_failure(exc: Any) -> tuple[int, Any]:
    """The rank whose end stopped the job (``exc``: torchrun's ChildFailedError) and its failure:
    the first the agent saw, except that survivors end soon after losing a peer (quietly, with
    LOST_PEER_STATUS, or aborting inside gloo: SIGABRT), often before the agent sees the peer's
    death: then the rank that ended on its own (killed from outside, or failed) is the cause."""
    rank, failure = exc.get_first_failure()
    if not _survivor(failure):
        return rank, failure
    # SIGTERM last: the agent sends it to the ranks still running once it stops the job
    causes = [
        (other.signal_name() == "SIGTERM", other.timestamp, r, other)
        for r, other in exc.failures.items()
        if not _survivor(other)
    ]
    if not causes:
        return rank, failure
    *_, rank, failure = min(causes, key=lambda item: item[:3])
    return rank, failure


def _survivor(failure: Any) -> bool:
    return failure.exitcode == LOST_PEER_STATUS or failure.signal_name() == "SIGABRT"
