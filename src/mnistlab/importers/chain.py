"""The neutral form every importer reads a model file into: a chain of simple operations.

Readers (Keras, ONNX) translate their format's layers into ``Op`` records in PyTorch's layout
(conv kernels (out, in, kh, kw), dense weights (out, in), maps (C, H, W)); ``lower`` then maps the
chain onto a CNN spec or the NumPy MLP. Each op remembers the original layer's name, class and
position so that every error and every shown layer can name it.

Op kinds and their attributes:

* ``conv``     kernel (kh, kw), stride (sh, sw), pad "valid" | "same", dilation (dh, dw);
               arrays weight (O, I, kh, kw), bias (O,) when it has one
* ``maxpool`` / ``avgpool``  size (kh, kw), stride (sh, sw)
* ``gap``      global average pooling, (C, H, W) -> (C,)
* ``bn``       eps; arrays gamma, beta, mean, var
* ``flatten``  order "chw" (PyTorch, ONNX) or "hwc" (Keras channels-last)
* ``dense``    arrays weight (out, in), bias (out,)
* ``act``      name: relu | sigmoid | tanh | elu | softmax | linear
* ``rescale``  scale, offset (y = x * scale + offset)
* ``dropout``  rate (identity at inference)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelFileError

OP_KINDS = ("conv", "maxpool", "avgpool", "gap", "bn", "flatten", "dense", "act", "rescale", "dropout")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "softmax", "linear")


@dataclass
class Op:
    kind: str
    source: str  # the original layer's (or node's) name
    source_class: str  # its class (Keras) or op type (ONNX)
    position: int  # 1-based, in the original model's layer order
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        return f"{self.source_class} {self.source!r} (layer {self.position})"

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: {problem}")


@dataclass
class Chain:
    """A model read from a file: its ops from input to output and where it came from."""

    ops: list[Op]
    source_format: str  # "keras" or "onnx"
    source_file: str
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts shown in the manifest


def tuple2(value: Any, what: str) -> tuple[int, int]:
    """A Keras/ONNX size given as one integer or a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ModelFileError(f"{what} {value!r} is not a 2-D size")
        return int(value[0]), int(value[1])
    return int(value), int(value)
