"""Datasets: canonical MNIST and Fashion-MNIST, offline-first, verified, in their original order.

>>> ds = load_dataset("mnist")          # cache -> IDX dir -> mirrors -> offline fallback
>>> ds.test_images[1302], ds.test_labels[1302]   # always the same image
"""

from __future__ import annotations

from .dataset import Dataset, validation_split
from .preprocess import Preprocessor
from .sources import DATASETS, load_dataset

__all__ = ["DATASETS", "Dataset", "Preprocessor", "load_dataset", "validation_split"]
