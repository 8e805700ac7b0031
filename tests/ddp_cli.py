"""`mnistlab` for the distributed tests: the real CLI, with its dataset read from the .npz named by
$MNISTLAB_TEST_DATASET (a small subset the test wrote). The CLI has no option to train on a
subset, and every rank is a fresh process that pytest's monkeypatch cannot reach.
$MNISTLAB_TEST_WORK_IN_FLIGHT: rank 0 ends its command with gloo work in flight (see below).
torchrun starts this script on each rank; `--nproc` makes the launcher start it again."""

import os
import sys
import time

import numpy as np

import mnistlab.data
from mnistlab.cli import main
from mnistlab.data import Dataset


def _subset(name, **_):
    with np.load(os.environ["MNISTLAB_TEST_DATASET"], allow_pickle=False) as arrays:
        parts = [arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
    return Dataset(name, *parts, tuple(str(d) for d in range(10)))


class _SlowToFinalize:
    """Keeps the interpreter finalizing for a while (its __del__ runs while modules are cleared)."""

    def __del__(self):
        time.sleep(3)


def _leave_with_work_in_flight(leave):
    """Rank 0 leaves with an all-reduce in flight that has a Python callback: rank 1 never joins
    it, so it fails when rank 1's process ends, and gloo's worker then takes the GIL to run and
    release the callback, while rank 0's interpreter would be finalizing (_SlowToFinalize)."""

    def leave_():
        import torch
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 0:
            work = dist.all_reduce(torch.ones(1), async_op=True)
            work.get_future().then(lambda fut: fut.value())
        leave()

    return leave_


mnistlab.data.load_dataset = _subset
if os.environ.get("MNISTLAB_TEST_WORK_IN_FLIGHT") and os.environ.get("RANK") == "0":
    from mnistlab.cnn import distributed

    distributed.leave = _leave_with_work_in_flight(distributed.leave)
    _slow = _SlowToFinalize()
sys.exit(main())
