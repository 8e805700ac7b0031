"""Where a model goes wrong: the confusion matrix, the most confused pairs, the misclassified images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..metrics import confused_pairs, confusion_matrix
from ..model_api import InspectableModel
from .activations import compute_activations


@dataclass
class Confusions:
    matrix: np.ndarray  # (classes, classes), rows = true class
    labels: np.ndarray = field(repr=False)  # (N,)
    proba: np.ndarray = field(repr=False)  # (N, classes)
    class_names: tuple[str, ...] = ()
    split: str = "test"

    @property
    def predictions(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / max(1, self.matrix.sum()))

    def pairs(self, top: int = 5) -> list[tuple[int, int, int]]:
        """(true, predicted, count), most frequent first."""
        return confused_pairs(self.matrix, top)

    def misclassified(self, true: int, predicted: int, limit: int | None = None) -> np.ndarray:
        """Indices of images of class ``true`` predicted as ``predicted``, most confident mistakes first."""
        idx = np.flatnonzero((self.labels == true) & (self.predictions == predicted))
        idx = idx[np.argsort(-self.proba[idx, predicted], kind="stable")]
        return idx[:limit] if limit is not None else idx


def confusions(
    model: InspectableModel, dataset: Dataset, split: str = "test", *, proba: np.ndarray | None = None,
    progress: bool = False,
) -> Confusions:
    """The split's predictions against its labels; ``progress`` shows a bar while the model runs."""
    images, labels = dataset.split(split)
    if proba is None:
        proba = compute_activations(model, images, ["output"], progress=progress)["output"]
    n = len(dataset.class_names)
    return Confusions(
        confusion_matrix(labels, proba.argmax(axis=1), n), np.asarray(labels), proba,
        tuple(dataset.class_names), split,
    )
