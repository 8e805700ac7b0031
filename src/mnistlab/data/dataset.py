from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """Images (N, 28, 28) uint8 and labels (N,) uint8, train and test, in canonical order."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = "memory"

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self.train_images, self.train_labels
        if split == "test":
            return self.test_images, self.test_labels
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first n images of each split (for quick tests); order is kept."""
        return Dataset(
            self.name,
            self.train_images[:n_train],
            self.train_labels[:n_train],
            self.test_images[:n_test],
            self.test_labels[:n_test],
            self.class_names,
            self.source,
        )


def validation_split(n_train: int, val: int, *, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) into the training split.

    With ``seed=None`` the validation set is the last ``val`` images (stable, like Keras'
    validation_split); with a seed it is a seeded random subset, whose indices the caller saves.
    Test indices are never touched.
    """
    if not 0 <= val < n_train:
        raise ConfigError(
            f"--val {val} must be between 0 and {n_train - 1} (the training split has {n_train} images)"
        )
    if seed is None:
        return np.arange(n_train - val), np.arange(n_train - val, n_train)
    order = np.random.default_rng(seed).permutation(n_train)
    return np.sort(order[val:]), np.sort(order[:val])
