"""Choosing images and computing activations for them, for any InspectableModel.

Images are chosen by split and index (canonical order: test image 1302 is always the same), by
label (the first ``n`` of that class, in order, so a choice is reproducible), or passed as arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data import Dataset
from ..errors import ConfigError
from ..model_api import InspectableModel

# Small batches keep each batch's activations in the CPU's caches while they are copied out
# (docs/performance.md, CNN internals).
BATCH_SIZE = 256


@dataclass(frozen=True)
class ImageSet:
    """Images with where they came from: ``indices`` into ``split`` (None for arrays passed in)."""

    images: np.ndarray  # (N, 28, 28) raw pixels
    labels: np.ndarray | None  # (N,) or None when unknown
    indices: np.ndarray | None  # (N,) into the split, or None
    split: str | None = None

    def __len__(self) -> int:
        return len(self.images)

    def names(self) -> list[str]:
        """Short captions: ``#1302 (4)`` for dataset images, ``image 0`` for arrays."""
        out = []
        for k in range(len(self)):
            name = f"#{int(self.indices[k])}" if self.indices is not None else f"image {k}"
            if self.labels is not None:
                name += f" ({int(self.labels[k])})"
            out.append(name)
        return out


def select_images(
    dataset: Dataset,
    split: str = "test",
    *,
    indices: Sequence[int] | None = None,
    label: int | None = None,
    n: int | None = None,
    exclude: Iterable[int] = (),
) -> ImageSet:
    """Images of one split by index, or the first ``n`` with a given label (all of them when n is None)."""
    images, labels = dataset.split(split)
    if indices is not None and label is not None:
        raise ConfigError("choose images either by index or by label, not both")
    if n is not None and n < 1:
        raise ConfigError(f"n={n} chooses no images; give n >= 1 (or None for all of them)")
    if indices is not None:
        idx = np.asarray(list(indices), dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(images))]
        if bad.size:
            raise ConfigError(f"index {int(bad[0])} is outside the {split} split (0..{len(images) - 1})")
    elif label is not None:
        if not 0 <= int(label) < len(dataset.class_names):
            raise ConfigError(
                f"label {label} is not a class of {dataset.name} (0..{len(dataset.class_names) - 1})"
            )
        idx = np.flatnonzero(labels == int(label))
        skip = set(int(i) for i in exclude)
        if skip:
            idx = np.array([i for i in idx if int(i) not in skip], dtype=np.int64)
        if n is not None:
            idx = idx[:n]
        if idx.size == 0:
            raise ConfigError(f"no {split} image has label {label}")
    else:
        idx = np.arange(len(images)) if n is None else np.arange(min(n, len(images)))
    return ImageSet(images[idx], np.asarray(labels)[idx], idx, split)


def image_set(images: np.ndarray, labels: Sequence[int] | None = None) -> ImageSet:
    """Arrays passed in directly (a drawn digit, a perturbed image): (N, 28, 28) or (28, 28)."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ConfigError(f"expected images of shape (N, 28, 28), got {images.shape}")
    return ImageSet(images, None if labels is None else np.asarray(labels), None, None)


def compute_activations(
    model: InspectableModel,
    images: np.ndarray | ImageSet,
    layers: Iterable[str] | str | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Activations of the named layers (all when None) as {name: (N, ...) float32}, in batches.

    Up to ``batch_size`` images go to the model in one call and its arrays are returned as they
    are; larger sets are done in batches written into arrays allocated once (with ``progress``, under
    a progress bar on stderr). Every layer of the seed CNN for 10,000 images is about 1.4 GB.
    """
    if isinstance(images, ImageSet):
        images = images.images
    names = model.check_layers(layers)
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    n = len(images)
    if n == 0:
        raise ConfigError("no images to compute activations for")
    if n <= batch_size:
        whole = model.activations_from_inputs(model.to_inputs(images), names)
        return {name: np.asarray(whole[name], np.float32) for name in names}  # no copy when already float32
    from tqdm.auto import tqdm

    out: dict[str, np.ndarray] = {}
    with tqdm(total=n, unit="image", desc="activations", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            batch = model.activations_from_inputs(model.to_inputs(images[start : start + batch_size]), names)
            for name in names:
                values = np.asarray(batch[name])
                if name not in out:
                    out[name] = np.empty((n,) + values.shape[1:], np.float32)
                out[name][start : start + len(values)] = values
            bar.update(len(values))
    return out


def unit_scores(acts: np.ndarray) -> np.ndarray:
    """One number per unit and image, (N, units): a map's mean (the OIP objective), a node's value."""
    acts = np.asarray(acts)
    if acts.ndim == 4:
        return acts.mean(axis=(2, 3))
    if acts.ndim == 2:
        return acts
    return acts.reshape(len(acts), -1)


def layer_shapes(model: InspectableModel) -> dict[str, tuple[int, ...]]:
    """Each layer's activation shape without the batch dimension, from one blank image."""
    probe = model.activations_from_inputs(
        model.to_inputs(np.zeros((1, 28, 28), np.uint8)), model.layer_names()
    )
    return {name: tuple(np.asarray(v).shape[1:]) for name, v in probe.items()}


def is_conv(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def _learned(model: InspectableModel, role: str) -> list[str]:
    """The layers of one role (model.layer_roles()), the output left out."""
    return [name for name, r in model.layer_roles().items() if r == role and name != "output"]


def default_layers(model: InspectableModel) -> list[str]:
    """The layers worth looking at by default: the learned ones (maps and vectors), not pass-through
    layers or the output."""
    roles = model.layer_roles()
    keep = [n for n in model.layer_names() if n != "output" and roles[n] != "pass-through"]
    return keep or [n for n in model.layer_names() if n != "output"] or model.layer_names()


def last_conv_layer(model: InspectableModel) -> str | None:
    """The last layer of learned feature maps; None for a model without one."""
    maps = _learned(model, "map")
    return maps[-1] if maps else None


def last_hidden_dense_layer(model: InspectableModel) -> str | None:
    """The learned vector layer just before the output (the seed's 70-node layer); None if there is none."""
    vectors = _learned(model, "vector")
    return vectors[-1] if vectors else None


def first_hidden_layer(model: InspectableModel) -> str:
    names = [n for n in model.layer_names() if n != "output"]
    return names[0] if names else "output"


def default_oip_layer(model: InspectableModel) -> str:
    """Where activation maximization looks by default: the last conv layer, else the first hidden one."""
    return last_conv_layer(model) or first_hidden_layer(model)


def load_run(run_dir, dataset: Dataset | str | None = None, *, data_dir=None):
    """(model, dataset, manifest) of a run; the dataset defaults to the one it was trained on."""
    from pathlib import Path

    from ..data import load_dataset
    from ..models import load_model
    from ..runs import read_manifest

    manifest = read_manifest(Path(run_dir))
    model = load_model(run_dir)
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset or manifest.get("dataset", "mnist"), data_dir=data_dir, progress=False)
    return model, dataset, manifest


def run_activations(
    run_dir,
    layers: Iterable[str] | str | None = None,
    *,
    split: str = "test",
    indices: Sequence[int] | None = None,
    label: int | None = None,
    n: int | None = None,
    images: np.ndarray | None = None,
    dataset: Dataset | str | None = None,
) -> tuple[ImageSet, dict[str, np.ndarray]]:
    """Activations for a run directory: images by split and index, by label, or as arrays."""
    if images is not None:
        from ..models import load_model

        model = load_model(run_dir)
        chosen = image_set(images)
    else:
        model, ds, _ = load_run(run_dir, dataset)
        chosen = select_images(ds, split, indices=indices, label=label, n=n)
    return chosen, compute_activations(model, chosen, layers)
