"""`mnistlab` for the distributed tests: the real CLI, with its dataset read from the .npz named by
$MNISTLAB_TEST_DATASET (a small subset the test wrote). The CLI has no option to train on a
subset, and every rank is a fresh process that pytest's monkeypatch cannot reach.
torchrun starts this script on each rank; `--nproc` makes the launcher start it again."""

import os
import sys

import numpy as np

import mnistlab.data
from mnistlab.cli import main
from mnistlab.data import Dataset


def _subset(name, **_):
    with np.load(os.environ["MNISTLAB_TEST_DATASET"], allow_pickle=False) as arrays:
        parts = [arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
    return Dataset(name, *parts, tuple(str(d) for d in range(10)))


mnistlab.data.load_dataset = _subset
sys.exit(main())
