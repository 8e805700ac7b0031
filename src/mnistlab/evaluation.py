"""Evaluate any trained model on its dataset's test split, in batches (memory stays small)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Dataset
from .metrics import accuracy, confused_pairs, confusion_matrix
from .model_api import InspectableModel


def predict_proba_batched(model: InspectableModel, images: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    return np.concatenate([model.predict_proba(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass
class Evaluation:
    probabilities: np.ndarray  # (N, classes)
    labels: np.ndarray  # (N,)
    confusion: np.ndarray  # (classes, classes), rows true

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return accuracy(self.labels, self.predictions)

    def confused_pairs(self, top: int = 10) -> list[tuple[int, int, int]]:
        return confused_pairs(self.confusion, top)


def evaluate(model: InspectableModel, dataset: Dataset, split: str = "test") -> Evaluation:
    images, labels = dataset.split(split)
    probabilities = predict_proba_batched(model, images)
    cm = confusion_matrix(labels, probabilities.argmax(axis=1), len(dataset.class_names))
    return Evaluation(probabilities, np.asarray(labels), cm)
