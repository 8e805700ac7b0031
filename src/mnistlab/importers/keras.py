"""Keras model files read with zipfile, json and h5py alone: TensorFlow and Keras are never needed.

Three layouts are read:

* ``.keras`` (Keras 3): a zip with ``config.json`` and ``model.weights.h5``; in the weights file
  each layer's group (``layers/conv2d_1/vars``) carries the layer's name as an attribute and its
  arrays as ``0``, ``1``, ... in the layer's own order.
* ``.h5`` written by Keras 2 / ``tf.keras`` and by Keras 3: the config is the ``model_config``
  attribute; ``model_weights`` lists the layers in model order (``layer_names``) and each layer its
  arrays in order (``weight_names``).

Weights are matched to layers by the layer's own name and the file's order, never by sorting names
(``conv2d_10`` sorts before ``conv2d_2``). A ``Lambda`` layer's code is never run, nor anything else.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError
from .chain import ACTIVATIONS, Chain, Op, tuple2
from .safe_files import (
    HDF5_MAGIC,
    MAX_CONFIG_BYTES,
    ZIP_MAGIC,
    h5_array,
    h5_names,
    open_h5,
    read_file_bytes,
    read_zip_members,
    refuse_other_format,
)

SUPPORTED_LAYERS = (
    "InputLayer",
    "Reshape",
    "Flatten",
    "Rescaling",
    "Conv2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "BatchNormalization",
    "Dropout",
    "Activation",
    "ReLU",
    "Softmax",
    "Dense",
)
_CLASS_ALIASES = {
    "Convolution2D": "Conv2D",
    "MaxPool2D": "MaxPooling2D",
    "AvgPool2D": "AveragePooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
}
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
INPUT_SHAPES = ((28, 28, 1), (28, 28), (784,))


def read_keras(path: str | Path) -> Chain:
    """A Keras model file (.keras or .h5, recognized by content) as a Chain."""
    path = Path(path)
    data = read_file_bytes(path)
    refuse_other_format(path, data, "keras")
    if data[:4] == ZIP_MAGIC:
        members = read_zip_members(path, data, ("config.json", "model.weights.h5"))
        config = _parse_json(path, members["config.json"], "config.json")
        with open_h5(path, members["model.weights.h5"]) as h5:
            weights, nested = _keras3_weights(path, h5)
            return _to_chain(path, config, weights, "keras (.keras)", nested)
    if data[:8] == HDF5_MAGIC:
        with open_h5(path, data) as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise ModelFileError(
                    f"{path}: holds weights only, no model config; save it with model.save(...), "
                    "not save_weights"
                )
            raw = raw.encode() if isinstance(raw, str) else bytes(raw)
            config = _parse_json(path, raw, "model_config")
            version = h5.attrs.get("keras_version", b"")
            version = version.decode() if isinstance(version, bytes) else str(version)
            weights = _legacy_h5_weights(path, h5)
            return _to_chain(path, config, weights, f"keras (.h5, written by Keras {version or 'unknown'})")
    if len(data) < 8:
        raise ModelFileError(f"{path}: only {len(data)} bytes; the file is truncated")
    raise ModelFileError(
        f"{path}: neither a .keras zip nor an HDF5 .h5 file; give a file written by Keras model.save()"
    )


def _parse_json(path: Path, raw: bytes, what: str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFileError(
            f"{path}: {what} is {len(raw)} bytes, far more than a model config; refusing the file"
        )
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: {what} is not valid JSON ({exc}); the file is damaged") from None


def _keras3_weights(path: Path, h5: Any) -> tuple[dict[str, list[np.ndarray]], set[str]]:
    """layer name -> its arrays, in the layer's order (vars/0, vars/1, ... compared as numbers);
    and the names of layers whose groups hold more groups (sub-layers: an LSTM's cell, a model)."""
    import h5py

    out: dict[str, list[np.ndarray]] = {}
    nested: set[str] = set()
    layers = h5.get("layers")
    if layers is None:
        return out, nested
    for key in layers:
        group = layers.get(key)
        vars_group = group.get("vars") if isinstance(group, h5py.Group) else None
        if vars_group is None:
            continue
        name = vars_group.attrs.get("name", key)
        name = name.decode() if isinstance(name, bytes) else str(name)
        indices = sorted(int(k) for k in vars_group if k.isdigit())
        out[name] = [h5_array(path, vars_group, str(i)) for i in indices]
        if any(k for k in group if k != "vars"):
            nested.add(name)
    return out, nested


def _legacy_h5_weights(path: Path, h5: Any) -> dict[str, list[np.ndarray]]:
    root = h5.get("model_weights", h5)
    out = {}
    for name in h5_names(path, root, "layer_names"):
        group = root.get(name)
        if group is None:
            raise ModelFileError(f"{path}: weights of layer {name!r} are missing; the file is incomplete")
        out[name] = [h5_array(path, group, weight) for weight in h5_names(path, group, "weight_names")]
    return out


# ----------------------------------------------------------------------------------------------
# The config: a single chain of layers


def _layer_list(path: Path, config: Any) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(f"{path}: the model config has no class_name; not a Keras model")
    cls = config["class_name"]
    body = config.get("config") or {}
    layers = body.get("layers") if isinstance(body, dict) else None
    if cls not in _MODEL_CLASSES or not isinstance(layers, list):
        raise ModelFileError(f"{path}: a {cls} model; mnistlab imports Sequential and Functional models")
    if cls != "Sequential":
        _check_single_chain(path, body, layers)
    return layers, cls


def _inbound_names(node: Any) -> list[str]:
    """Names of the layers feeding a Functional layer (Keras 2 lists and Keras 3 keras_history)."""
    names: list[str] = []
    if isinstance(node, dict):
        history = (
            (node.get("config") or {}).get("keras_history") if isinstance(node.get("config"), dict) else None
        )
        if isinstance(history, list) and history and isinstance(history[0], str):
            return [history[0]]
        for value in node.values():
            names += _inbound_names(value)
    elif isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            return [node[0]]
        for value in node:
            names += _inbound_names(value)
    return names


def _check_single_chain(path: Path, body: dict[str, Any], layers: list[dict[str, Any]]) -> None:
    previous = None
    for position, layer in enumerate(layers):
        name = layer.get("name") or (layer.get("config") or {}).get("name")
        nodes = layer.get("inbound_nodes") or []
        inbound = _inbound_names(nodes)
        if position == 0:
            if inbound:
                raise ModelFileError(
                    f"{path}: the first layer {name!r} has inputs; the model is not a single chain"
                )
        elif len(nodes) != 1 or inbound != [previous]:
            raise ModelFileError(
                f"{path}: layer {name!r} takes {inbound or 'nothing'} instead of just {previous!r}: "
                "the model branches, "
                "merges or reuses a layer; mnistlab imports single chains of layers"
            )
        previous = name
    outputs = _inbound_names(body.get("output_layers"))
    if len(outputs) != 1 or outputs[0] != previous:
        raise ModelFileError(
            f"{path}: the model's outputs are {outputs}; mnistlab imports models with one output, "
            "the last layer"
        )


def _to_chain(
    path: Path, config: Any, weights: dict[str, list[np.ndarray]], fmt: str, nested: Collection[str] = ()
) -> Chain:
    layers, model_class = _layer_list(path, config)
    ops: list[Op] = []
    state = _State(path)
    position = 0
    for layer in layers:
        if not isinstance(layer, dict):
            raise ModelFileError(f"{path}: a layer entry is not an object; the config is damaged")
        cls = _CLASS_ALIASES.get(layer.get("class_name", "?"), layer.get("class_name", "?"))
        cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = str(cfg.get("name") or layer.get("name") or f"layer{position}")
        if cls == "InputLayer":
            state.set_input(
                cfg.get("batch_shape") or cfg.get("batch_input_shape") or cfg.get("batch_size"), name
            )
            continue
        position += 1
        if not ops and state.shape is None:  # Keras 2 puts the input shape on the first layer
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
            if shape is None:
                build = layer.get("build_config") or {}
                shape = build.get("input_shape") if isinstance(build, dict) else None
            if shape is None:
                raise ModelFileError(
                    f"{path}: the model has no input shape; build it with an Input((28, 28, 1)) first"
                )
            state.set_input(shape, name)
        if name in nested and cls in SUPPORTED_LAYERS:  # an unsupported class is named as such below
            raise ModelFileError(
                f"{cls} {name!r} (layer {position}): its weights hold nested layers; "
                "mnistlab imports flat chains of built-in layers"
            )
        ops += _layer_ops(state, cls, name, position, cfg, weights.get(name, []))
    if not ops:
        raise ModelFileError(f"{path}: the model has no layers")
    return Chain(
        ops,
        "keras",
        path.name,
        {"layout": fmt, "model_class": model_class, "input_shape": list(state.input_shape or ())},
    )


class _State:
    """What the chain has done so far: the input's shape and whether the data is still raw pixels."""

    def __init__(self, path: Path):
        self.path = path
        self.shape: tuple[int, ...] | None = None  # Keras shape without the batch axis
        self.input_shape: tuple[int, ...] | None = None
        self.pixels = True  # no conv/pool/dense applied yet: a Reshape only re-arranges the image

    def set_input(self, batch_shape: Any, name: str) -> None:
        try:
            shape = tuple(int(v) for v in list(batch_shape)[1:])
        except (TypeError, ValueError):
            raise ModelFileError(
                f"{self.path}: input {name!r} has shape {batch_shape!r}; expected (28, 28, 1), "
                "(28, 28) or (784,)"
            ) from None
        if shape not in INPUT_SHAPES:
            raise ModelFileError(
                f"{self.path}: input {name!r} has shape {shape}; mnistlab imports models for 28x28x1 "
                "images: (28, 28, 1), (28, 28) or (784,)"
            )
        self.shape = self.input_shape = shape


def _activation(cfg: dict[str, Any], where: str, key: str = "activation") -> str:
    value = cfg.get(key, "linear")
    if isinstance(value, dict):  # a serialized activation object
        value = (
            (value.get("config") or {}).get("name")
            if value.get("class_name") == "function"
            else value.get("class_name")
        )
    name = str(value).lower() if value is not None else "linear"
    if name not in ACTIVATIONS:
        raise ModelFileError(
            f"{where}: activation {value!r} is not supported; mnistlab reads {', '.join(ACTIVATIONS)}"
        )
    return name


def _need(arrays: list[np.ndarray], count: int, where: str) -> None:
    if len(arrays) != count:
        raise ModelFileError(
            f"{where}: has {len(arrays)} weight arrays, expected {count}; the weights are missing "
            "or belong to another model"
        )


def _layer_ops(
    state: _State, cls: str, name: str, position: int, cfg: dict[str, Any], arrays: list[np.ndarray]
) -> list[Op]:
    where = f"{cls} {name!r} (layer {position})"

    def op(kind: str, attrs: dict[str, Any] | None = None, **named: np.ndarray) -> Op:
        return Op(kind, name, cls, position, attrs or {}, named)

    if cls == "Lambda":
        raise ModelFileError(
            f"{where}: a Lambda layer carries Python code, which mnistlab never runs; "
            "rebuild the model with built-in layers"
        )
    if cls in _MODEL_CLASSES:
        raise ModelFileError(
            f"{where}: a model inside the model; mnistlab imports flat chains of layers, so rebuild "
            "it as one Sequential"
        )
    if cls not in SUPPORTED_LAYERS:
        raise ModelFileError(
            f"{where}: layer class {cls} is not supported; mnistlab imports {', '.join(SUPPORTED_LAYERS)}"
        )
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise ModelFileError(
            f"{where}: data_format {cfg.get('data_format')!r}; mnistlab imports channels_last models"
        )
    if cls in ("Reshape", "Flatten"):
        target = tuple(cfg.get("target_shape") or ()) if cls == "Reshape" else (-1,)
        if state.pixels and cls == "Reshape":
            if target not in INPUT_SHAPES:
                raise ModelFileError(
                    f"{where}: reshapes the image to {target}; mnistlab reads (28, 28, 1), (28, 28) or (784,)"
                )
            state.shape = target
            return []
        if len(target) != 1:
            raise ModelFileError(
                f"{where}: reshapes to {target}; only a flatten to one axis is supported here"
            )
        return [op("flatten", {"order": "hwc"})]
    if cls == "Rescaling":
        scale, offset = cfg.get("scale", 1.0), cfg.get("offset", 0.0)
        if not all(isinstance(v, (int, float)) for v in (scale, offset)):
            raise ModelFileError(
                f"{where}: per-channel scale/offset {scale!r}/{offset!r}; only single numbers are supported"
            )
        return [op("rescale", {"scale": float(scale), "offset": float(offset)})]
    if cls == "Dropout":
        return [op("dropout", {"rate": float(cfg.get("rate", 0.0))})]
    if cls in ("Activation", "Softmax", "ReLU"):
        if cls == "Softmax":
            axis = cfg.get("axis", -1)
            if axis not in (-1, [-1]):
                raise ModelFileError(f"{where}: softmax over axis {axis}; only the last axis is supported")
            return [op("act", {"name": "softmax"})]
        if cls == "ReLU":
            plain = (
                cfg.get("max_value") is None and not cfg.get("negative_slope") and not cfg.get("threshold")
            )
            if not plain:
                raise ModelFileError(
                    f"{where}: ReLU with max_value/negative_slope/threshold is not supported; "
                    "use a plain ReLU"
                )
            return [op("act", {"name": "relu"})]
        return [op("act", {"name": _activation(cfg, where)})]
    state.pixels = False
    if cls == "Conv2D":
        if int(cfg.get("groups", 1)) != 1:
            raise ModelFileError(
                f"{where}: grouped convolution (groups={cfg.get('groups')}) is not supported"
            )
        padding = str(cfg.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise ModelFileError(f"{where}: padding {padding!r}; mnistlab reads valid and same")
        kernel, bias = _kernel_and_bias(cfg, arrays, where, "filters")
        named = {
            "weight": np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        }  # (kh, kw, in, out) -> (out, in, kh, kw)
        if bias is not None:
            named["bias"] = bias
        attrs = {
            "kernel": tuple2(cfg.get("kernel_size"), f"{where}: kernel_size"),
            "stride": tuple2(cfg.get("strides", 1), f"{where}: strides"),
            "pad": padding,
            "dilation": tuple2(cfg.get("dilation_rate", 1), f"{where}: dilation_rate"),
        }
        return [op("conv", attrs, **named), *_act_op(cfg, where, op)]
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        if str(cfg.get("padding", "valid")).lower() != "valid":
            raise ModelFileError(f"{where}: pooling with padding='same' is not supported; use 'valid'")
        size = tuple2(cfg.get("pool_size", 2), f"{where}: pool_size")
        stride = tuple2(cfg.get("strides") or size, f"{where}: strides")
        return [op("maxpool" if cls == "MaxPooling2D" else "avgpool", {"size": size, "stride": stride})]
    if cls == "GlobalAveragePooling2D":
        if cfg.get("keepdims"):
            raise ModelFileError(f"{where}: keepdims=True is not supported")
        return [op("gap")]
    if cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 3, 1):  # the channel axis of (H, W, C) maps or (units,) vectors
            raise ModelFileError(f"{where}: normalizes axis {axis}; only the channel axis is supported")
        scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
        _need(arrays, 2 + scale + center, where)
        rest = list(arrays)
        gamma = rest.pop(0) if scale else np.ones_like(arrays[-1])
        beta = rest.pop(0) if center else np.zeros_like(arrays[-1])
        return [
            op(
                "bn",
                {"eps": float(cfg.get("epsilon", 1e-3))},
                gamma=gamma,
                beta=beta,
                mean=rest[0],
                var=rest[1],
            )
        ]
    if cls == "Dense":
        kernel, bias = _kernel_and_bias(cfg, arrays, where, "units")
        named = {"weight": np.ascontiguousarray(kernel.T), **({"bias": bias} if bias is not None else {})}
        return [op("dense", {}, **named), *_act_op(cfg, where, op)]
    raise ModelFileError(
        f"{where}: layer class {cls} is not supported"
    )  # pragma: no cover - SUPPORTED_LAYERS covers it


def _kernel_and_bias(
    cfg: dict[str, Any], arrays: list[np.ndarray], where: str, size_key: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """A Conv2D's or Dense's kernel (its last axis the filters or units) and bias, checked against
    the layer's config."""
    use_bias = bool(cfg.get("use_bias", True))
    _need(arrays, 2 if use_bias else 1, where)
    kernel, size = arrays[0], cfg.get(size_key)
    rank, layout = (4, "(kh, kw, in, {})") if size_key == "filters" else (2, "(in, {})")
    if kernel.ndim != rank or kernel.shape[-1] != int(size if size is not None else -1):
        raise ModelFileError(f"{where}: kernel has shape {kernel.shape}, expected {layout.format(size)}")
    return kernel, (arrays[1] if use_bias else None)


def _act_op(cfg: dict[str, Any], where: str, op: Any) -> list[Op]:
    name = _activation(cfg, where)
    return [] if name == "linear" else [op("act", {"name": name})]
