"""Bring your own model: Keras and ONNX files become ordinary mnistlab run directories.

>>> from mnistlab.importers import import_model
>>> import_model("keras", "cnn.h5", "runs/article-cnn")          # then every command opens it

A reader (one per format, in ``READERS``) turns the file into a ``Chain`` of simple ops; ``lower``
groups them and the model becomes a NumPy MLP run when the MLP can hold it (Dense layers with one
hidden activation), else a CNN run whose spec reproduces it. Nothing is written until the whole
model has been read, checked and converted; a bad file raises ModelFileError naming the problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MnistlabError
from .chain import Chain
from .lower import (
    block_label,
    check_classes,
    fold_rescale,
    group_blocks,
    is_identity,
    mlp_can_hold,
    mlp_parts,
    preprocessing,
)


def _read_keras(path: Path) -> Chain:
    from .keras import read_keras

    return read_keras(path)


def _read_onnx(path: Path) -> Chain:
    from .onnx_graph import read_onnx

    return read_onnx(path)


READERS: dict[str, Callable[[Path], Chain]] = {"keras": _read_keras, "onnx": _read_onnx}
PREPROCESS_CHOICES = ("auto", "unit", "standard", "none")


def read_model_file(fmt: str, path: str | Path) -> Chain:
    if fmt not in READERS:
        raise ConfigError(f"unknown model format {fmt!r}; choose one of: {', '.join(READERS)}")
    return READERS[fmt](Path(path))


def import_model(
    fmt: str,
    path: str | Path,
    out: str | Path,
    *,
    preprocess: str = "auto",
    dataset: str = "mnist",
    data_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Read a model file and write it as a run directory; returns the run's path.

    ``preprocess`` is what the model expects done to raw pixels (0..255) before its first layer:
    ``unit`` (/ 255), ``standard`` (per-pixel, fitted on the dataset's training split) or ``none``;
    ``auto`` picks ``none`` when the model starts with its own rescaling, else ``unit``.
    """
    from ..data import DATASETS
    from ..runs import RunError, check_replaceable, make_manifest, write_run

    if preprocess not in PREPROCESS_CHOICES:
        raise ConfigError(
            f"unknown preprocessing {preprocess!r}; choose one of: {', '.join(PREPROCESS_CHOICES)}"
        )
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise RunError(f"{out}: already exists; choose another --out or add --overwrite")
    check_replaceable(out)  # before reading the model: --overwrite of something that is no run
    path = Path(path)
    chain = read_model_file(fmt, path)
    scale, offset, ops = fold_rescale(chain)
    if preprocess == "auto":
        preprocess = "unit" if is_identity(scale, offset) else "none"
    blocks = group_blocks(ops)
    check_classes(blocks, len(DATASETS[dataset].class_names))
    train_images = None
    if preprocess == "standard":
        from ..data import load_dataset

        train_images = load_dataset(dataset, data_dir=data_dir, progress=False).train_images
    pre = preprocessing(preprocess, scale, offset, train_images)
    imported: dict[str, Any] = {
        "format": chain.source_format,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "preprocess": preprocess,
        **chain.details,
    }
    if not is_identity(scale, offset):
        scalar = np.ndim(scale) == 0 and np.ndim(offset) == 0
        imported["rescaling"] = (
            [float(scale), float(offset)] if scalar else "per-pixel (folded into preprocess.npz)"
        )
    folded = [op for op in chain.ops[: len(chain.ops) - len(ops)] if op.kind == "rescale"]
    notes = [f"{op.source_class} {op.source!r} folded into the pixel preprocessing" for op in folded]
    notes += [note for block in blocks for note in block.notes]
    if notes:
        imported["notes"] = notes
    if mlp_can_hold(blocks):
        config, weights = mlp_parts(blocks, preprocess)
        from ..mlp.config import MLPConfig

        MLPConfig.from_dict(config)  # validates
        dense = [b for b in blocks if b.type in ("dense", "output")]
        names = [f"hidden{i}" for i in range(1, len(dense))] + ["output"]
        imported["layers"] = {name: block_label(b) for name, b in zip(names, dense)}
        kind = "mlp"
    else:
        try:
            import torch  # noqa: F401 - a CNN run's weights come from the torch network built from its spec
        except ModuleNotFoundError:
            raise MnistlabError(
                "this model becomes a CNN run, which needs PyTorch: pip install 'mnistlab[cnn]'"
            ) from None
        from .to_cnn import build_spec, cnn_state

        spec, owners = build_spec(blocks)
        weights = cnn_state(spec, blocks)
        from ..cnn.spec import infer_shapes

        names: dict[str, list] = {}
        for info, block in zip(infer_shapes(spec), owners):
            target = info.name if info.inspectable else names and list(names)[-1]
            if target not in names:
                names[target] = block_label(block)
        imported["layers"] = names
        config = {"spec": spec.to_dict(), "spec_name": f"imported from {path.name}", "preprocess": preprocess}
        kind = "cnn"
    extra: dict[str, Any] = {"imported": imported, "metrics": {}, "status": "imported"}
    if kind == "cnn":
        extra.update(state="imported", epochs_done=0, spec_string=spec.to_string())
    manifest = make_manifest(kind, config, dataset=dataset, **extra)
    weights = {k: np.asarray(v) for k, v in weights.items()}
    return write_run(out, manifest, weights, pre.to_arrays(), [], overwrite=overwrite)


def original_names(manifest: dict[str, Any]) -> dict[str, str]:
    """For an imported run, each layer's original layers as text ("conv2d (Conv2D), ..."); {} otherwise."""
    layers = (manifest.get("imported") or {}).get("layers") or {}
    return {
        name: ", ".join(f"{s['name']} ({s['class']})" for s in sources) for name, sources in layers.items()
    }


__all__ = ["READERS", "import_model", "original_names", "read_model_file"]
