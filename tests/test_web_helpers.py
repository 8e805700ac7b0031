"""A tiny synthetic InspectableModel and run directories for the web tests (no torch, no training, no MNIST).

The model has a conv-like layer (N, 4, 13, 13), a dense layer (N, 16) and a softmax output, so the
page's two kinds of activation grids are exercised. Its weights live in the run's weights.npz, so
rewriting the run on disk really changes its predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistlab.data import Dataset, Preprocessor
from mnistlab.model_api import InspectableModel
from mnistlab.runs import make_manifest, read_run, write_run

LAYERS = ("conv1", "dense1", "output")


class TinyModel(InspectableModel):
    kind = "mlp"

    def __init__(self, weights: dict[str, np.ndarray], preprocess: Preprocessor):
        self.w = weights
        self.preprocess = preprocess

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> TinyModel:
        record = read_run(run_dir)
        return cls(record.weights, Preprocessor.from_arrays(record.preprocess))

    def layer_names(self) -> list[str]:
        return list(LAYERS)

    def activations_from_inputs(self, inputs, layers):
        x = np.asarray(inputs, np.float32)
        # 2x2 patches with stride 2 -> (N, 4, 14, 14), cropped to 13x13 to make the shape unusual.
        patches = x.reshape(len(x), 14, 2, 14, 2).transpose(0, 1, 3, 2, 4).reshape(len(x), 14, 14, 4)
        conv = np.maximum(patches @ self.w["k"], 0).transpose(0, 3, 1, 2)[:, :, :13, :13]  # (N, 4, 13, 13)
        dense = np.tanh(conv.reshape(len(x), -1) @ self.w["w1"])  # (N, 16)
        logits = dense @ self.w["w2"] + self.w["b2"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        out = {"conv1": conv, "dense1": dense, "output": e / e.sum(1, keepdims=True)}
        return {name: out[name].astype(np.float32) for name in layers}

    def input_gradient(self, inputs, layer, units):
        raise NotImplementedError


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "k": rng.normal(0, 0.5, (4, 4)).astype(np.float32),
        "w1": rng.normal(0, 0.05, (4 * 13 * 13, 16)).astype(np.float32),
        "w2": rng.normal(0, 1.0, (16, 10)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 10).astype(np.float32),
    }


def write_tiny_run(run_dir: Path, seed: int = 0, *, overwrite: bool = False) -> Path:
    images = tiny_dataset().train_images
    pre = Preprocessor.fit("unit", images)
    history = [
        {
            "epoch": e, "loss": 2.0 / e, "accuracy": 0.5 + 0.1 * e, "val_loss": 2.2 / e,
            "val_accuracy": 0.45 + 0.1 * e,
        }
        for e in (1, 2, 3)
    ]
    manifest = make_manifest("mlp", {"hidden": [16]}, dataset="mnist", metrics={"test_accuracy": 0.5})
    return write_run(run_dir, manifest, tiny_weights(seed), pre.to_arrays(), history, overwrite=overwrite)


def tiny_dataset(name: str = "mnist") -> Dataset:
    """60 test images of blobs whose position depends on the label: a stand-in for MNIST."""
    rng = np.random.default_rng(1)
    labels = np.arange(60) % 10
    images = np.zeros((60, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        r, c = 6 + 2 * (label // 5) * 4, 4 + 4 * (label % 5)
        images[i, r : r + 8, c : c + 6] = rng.integers(120, 256, (8, 6))
    names = tuple(str(d) for d in range(10))
    return Dataset(name, images, labels.astype(np.uint8), images.copy(), labels.astype(np.uint8), names)


def tiny_app(runs_dir: Path, **kwargs):
    from mnistlab.web.app import create_app

    return create_app(runs_dir, model_loader=TinyModel.from_run_dir, dataset_loader=tiny_dataset, **kwargs)
