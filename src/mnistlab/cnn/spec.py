"""Declarative CNN specs: a list of small layer records, a dry pass for shapes, presets.

Pure Python (no torch): ``mnistlab summary --spec`` and spec validation work without it.

One-line syntax (the CLI's ``--spec``): layers separated by commas or spaces; each layer is its
type followed by ``:``-separated arguments, positional or ``key=value``::

    conv:32:3,pool:2,conv:64:3,pool:2,conv:64:3,flatten,dense:70,output:10

    conv:32:3:act=elu:pad=same  bn  dropout:0.25  dense:128:act=tanh  output:10:sigmoid

Layer types and their arguments (positional order first); each is a class in ``layers.py``, the
registry that parsing, shapes, the summary, the torch model and inspection all ask:

* ``conv``    filters, kernel, stride=1, pad=valid|same|INT, act=relu|sigmoid|elu|tanh|linear
* ``pool``    size, stride=size (max pooling)
* ``avgpool`` size, stride=size (average pooling)
* ``gap``     global average pooling: each map's mean, (C, H, W) -> (C,); replaces flatten
* ``flatten``
* ``dense``   units, act=relu|...
* ``output``  units (classes), act=softmax|sigmoid; must be the last layer (``dense`` as the
  last layer is read as ``output``)
* ``dropout`` rate
* ``bn``      batch normalization of the previous conv (2-D) or dense (1-D) output

As a dict / TOML / JSON: ``{"input": [1, 28, 28], "layers": [{"type": "conv", "filters": 32,
"kernel": 3}, ...]}`` (or just the list). Layer names are derived, never given: ``conv1``,
``pool1``, ``avgpool1``, ..., ``flatten`` (or ``gap``), ``dense1``, ..., ``output``;
``bn``/``dropout`` layers are named
after the layer they follow (``conv1_bn``, ``dense1_dropout``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .layers import KINDS, LAYER_TYPES, Layer, LayerKind, find_kind

INPUT_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class Spec:
    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int] = INPUT_SHAPE

    def to_dict(self) -> dict[str, Any]:
        return {"input": list(self.input_shape), "layers": [layer.to_dict() for layer in self.layers]}

    def to_string(self) -> str:
        return ",".join(layer.to_token() for layer in self.layers)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].units

    @property
    def output_activation(self) -> str:
        return self.layers[-1].act


@dataclass(frozen=True)
class LayerInfo:
    """A row of the summary: what the dry pass found for one layer."""

    name: str
    layer: Layer
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int

    @property
    def kind(self) -> LayerKind:
        return self.layer.kind

    @property
    def inspectable(self) -> bool:
        """False for attached kinds (bn, dropout): folded into the named layer they follow."""
        return not self.kind.attached


# ----------------------------------------------------------------------------------------------
# Presets. The recipe holds training defaults that CLI options override.

@dataclass(frozen=True)
class Preset:
    spec: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    about: str = ""


PRESETS: dict[str, Preset] = {
    # The article's network and recipe (Keras: RMSprop lr 1e-3, batch 64, 5 epochs, pixels / 255).
    "seed": Preset(
        "conv:32:3,pool:2,conv:64:3,pool:2,conv:64:3,flatten,dense:70,output:10",
        {
            "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 64, "epochs": 5, "preprocess": "unit",
            "init": "glorot",
        },
        "the seed article's CNN: 96,844 parameters, ~99.0-99.3% after 5 epochs",
    ),
    "seed-vi": Preset(
        "conv:32:3,pool:2,conv:64:3,pool:2,conv:128:3,flatten,dense:100,output:10",
        {
            "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 64, "epochs": 5, "preprocess": "unit",
            "init": "glorot",
        },
        "the seed's wider variant: 208,982 parameters",
    ),
    # Few FLOPs, batch norm and a one-cycle schedule at a large batch: what the GPU time-to-accuracy
    # target measures (how the recipe was chosen: docs/performance.md).
    "fast": Preset(
        "conv:24:5:pad=same,bn,pool:2,conv:48:5:pad=same,bn,pool:2,flatten,dense:128,output:10",
        {
            "optimizer": "adamw", "lr": 8e-3, "weight_decay": 5e-4, "batch_size": 256, "epochs": 2,
            "schedule": "onecycle", "preprocess": "standard", "init": "default",
        },
        "small BN net for time-to-99%: two epochs at batch 256 with a one-cycle schedule",
    ),
    # Batch norm, dropout, shift augmentation and a one-cycle schedule: >= 99.6% single model.
    "best": Preset(
        "conv:32:3,bn,conv:32:3,bn,pool:2,dropout:0.1,"
        "conv:64:3,bn,conv:64:3,bn,pool:2,dropout:0.1,"
        "flatten,dense:128,bn,dropout:0.3,output:10",
        {
            "optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4, "batch_size": 128, "epochs": 15,
            # pixels / 255, not per-pixel standardization: a shifted stroke lands on border pixels whose
            # std is ~0, and standardized it becomes a huge input.
            "schedule": "onecycle", "augment": 2, "label_smoothing": 0.05, "preprocess": "unit",
            "init": "default",
        },
        "VGG-style BN net with shift augmentation: >= 99.6% as a single model",
    ),
}


# ----------------------------------------------------------------------------------------------
# Parsing

def _make_layer(pos: int, ltype: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Layer:
    kind = find_kind(ltype)
    if kind is None:
        raise ConfigError(
            f"layer {pos}: unknown layer type {str(ltype).lower()!r}; choose one of: {', '.join(LAYER_TYPES)}"
        )
    where = f"layer {pos} ({kind.name})"
    names = [arg.name for arg in kind.args if arg.positional]
    if len(args) > len(names):
        raise ConfigError(
            f"{where}: too many arguments {list(args)!r}; it takes: {', '.join(names) or 'none'}"
        )
    values: dict[str, Any] = dict(zip(names, args))
    for key, value in kwargs.items():
        key = kind.canonical_key(key)
        if key in values:
            raise ConfigError(f"{where}: {key} given twice")
        values[key] = value
    return kind.make(values, where)


def _parse_token(pos: int, token: str) -> Layer:
    parts = token.split(":")
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        if "=" in part:
            key, _, value = part.partition("=")
            kwargs[key.strip().lower()] = value.strip()
        elif kwargs:
            raise ConfigError(f"layer {pos} ({parts[0]}): positional argument {part!r} after key=value ones")
        else:
            args.append(part.strip())
    return _make_layer(pos, parts[0].strip(), args, kwargs)


def _finish(layers: list[Layer], input_shape: Sequence[int] = INPUT_SHAPE) -> Spec:
    if not layers:
        raise ConfigError("the spec has no layers; e.g. conv:32:3,pool:2,flatten,output:10")
    output = KINDS["output"]
    if layers[-1].type == "dense":  # the spec language reads a last dense layer as the output
        act = layers[-1].act if layers[-1].act in OUTPUT_ACTIVATIONS else "softmax"
        layers[-1] = output.make({"units": layers[-1].units, "act": act}, f"layer {len(layers)} (output)")
    if layers[-1].type != "output":
        raise ConfigError(
            f"layer {len(layers)} ({layers[-1].type}): the last layer must be output:CLASSES (or dense), "
            "e.g. output:10"
        )
    for pos, layer in enumerate(layers[:-1], start=1):
        if layer.type == "output":
            raise ConfigError(
                f"layer {pos} (output): output must be the last layer; use dense:{layer.units} here"
            )
        act = layer.get("act")
        if act and not ACTIVATIONS[act].hidden:
            raise ConfigError(f"layer {pos} ({layer.type}): {act} is only for the last layer; "
                              f"use one of: {', '.join(HIDDEN_ACTIVATIONS)}")
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input shape {input_shape!r} must be three integers (channels, height, width)"
        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"input shape {input_shape!r} must be three positive integers (channels, height, width)"
        )
    spec = Spec(tuple(layers), shape)  # type: ignore[arg-type]
    infer_shapes(spec)  # fail now, with the layer's position, rather than when building
    return spec


def parse_spec(source: str | Path | Mapping[str, Any] | Sequence[Any] | Spec) -> Spec:
    """A spec from a preset name, the one-line syntax, a .toml/.json path, a dict or a list of layers."""
    if isinstance(source, Spec):
        return source
    if isinstance(source, Path):
        return load_spec_file(source)
    if isinstance(source, str):
        text = source.strip()
        if text in PRESETS:
            return parse_spec(PRESETS[text].spec)
        if text.lower().endswith((".toml", ".json")):
            return load_spec_file(Path(text))
        if text.startswith(("{", "[")):
            try:
                return parse_spec(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"spec is not valid JSON ({exc.msg} at char {exc.pos})") from None
        tokens = [t for t in re.split(r"[,\s]+", text) if t]
        if not tokens:
            raise ConfigError(
                f"empty spec; give a preset ({', '.join(PRESETS)}) or layers like "
                "conv:32:3,pool:2,flatten,output:10"
            )
        if len(tokens) == 1 and ":" not in tokens[0]:
            if find_kind(tokens[0]) is None:
                raise ConfigError(
                    f"unknown spec or preset {text!r}; presets: {', '.join(PRESETS)}; "
                    "or layers like conv:32:3,pool:2,flatten,output:10"
                )
        return _finish([_parse_token(pos, tok) for pos, tok in enumerate(tokens, start=1)])
    if isinstance(source, Mapping):
        unknown = set(source) - {"input", "layers", "name"}
        if unknown:
            raise ConfigError(
                f"spec has unknown keys {sorted(unknown)}; expected 'layers' and optionally 'input'"
            )
        if "layers" not in source:
            raise ConfigError("spec dict needs a 'layers' list")
        layers = _layers_from_list(source["layers"])
        return _finish(layers, source.get("input", INPUT_SHAPE))
    if isinstance(source, (list, tuple)):
        return _finish(_layers_from_list(source))
    raise ConfigError(f"cannot read a spec from {type(source).__name__}; give a string, dict, list or path")


def _layers_from_list(items: Iterable[Any]) -> list[Layer]:
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise ConfigError("spec 'layers' must be a list of layers")
    layers = []
    for pos, item in enumerate(items, start=1):
        if isinstance(item, str):
            layers.append(_parse_token(pos, item))
        elif isinstance(item, Mapping):
            item = dict(item)
            if "type" not in item:
                raise ConfigError(f"layer {pos}: no 'type'; choose one of: {', '.join(LAYER_TYPES)}")
            ltype = item.pop("type")
            layers.append(_make_layer(pos, ltype, (), item))
        elif isinstance(item, (list, tuple)) and item:
            layers.append(_make_layer(pos, item[0], tuple(item[1:]), {}))
        else:
            raise ConfigError(
                f"layer {pos}: {item!r} is not a layer (a dict with 'type', a string or a list)"
            )
    return layers


def load_spec_file(path: Path) -> Spec:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"spec file {path} not found; give a preset ({', '.join(PRESETS)}), a layer string or a file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"spec file {path}: cannot read it ({exc.strerror})") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ConfigError(f"{path}: TOML specs need Python >= 3.11; use a .json spec instead") from None
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    else:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    try:
        return parse_spec(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Dry pass: shapes and parameter counts, layer by layer

def infer_shapes(spec: Spec) -> list[LayerInfo]:
    """Walk the spec from the input shape; a layer that cannot apply fails with its position."""
    shape: tuple[int, ...] = tuple(spec.input_shape)
    infos: list[LayerInfo] = []
    counts: dict[str, int] = {}
    last_named = "input"
    for pos, layer in enumerate(spec.layers, start=1):
        where = f"layer {pos} ({layer.to_token()})"
        kind = layer.kind
        in_shape = shape
        shape, params = kind.infer(layer, shape, where, infos[-1] if infos else None)
        if kind.naming == "attached":
            name = f"{last_named}_{kind.name}"
            if any(info.name == name for info in infos):
                raise ConfigError(f"{where}: a second {kind.name} after {last_named}; one is enough")
        elif kind.naming == "single":
            name = kind.name
            if any(info.name == name for info in infos):
                raise ConfigError(f"{where}: a second {kind.name}; one is enough")
        else:
            counts[kind.name] = counts.get(kind.name, 0) + 1
            name = f"{kind.name}{counts[kind.name]}"
        infos.append(LayerInfo(name, layer, in_shape, shape, params))
        if not kind.attached:
            last_named = name
    return infos


def count_params(spec: Spec) -> int:
    return sum(info.params for info in infer_shapes(spec))


def summary_table(spec: Spec, title: str = "", sources: Mapping[str, str] | None = None) -> str:
    """A Keras-style summary: name, type, output shape, parameters, and the totals; with ``sources``
    (layer name -> the original model's layers, for imported runs) a column showing them."""
    infos = infer_shapes(spec)
    rows = [("Layer (name)", "Type", "Output shape", "Param #") + (("Original layers",) if sources else ())]
    running = 0
    for info in infos:
        fixed = info.kind.non_trainable_params(info.layer, info.output_shape)
        running += fixed
        shape = "(None, " + ", ".join(str(v) for v in info.output_shape) + ")"
        rows.append((info.name, info.kind.keras_name + info.kind.summary_note(info.layer), shape,
                     f"{info.params + fixed:,}") + ((sources.get(info.name, ""),) if sources else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "=" * (sum(widths) + 3 * (len(widths) - 1))
    out = [title] if title else []
    for i, row in enumerate(rows):
        if i < 2:
            out.append(rule)
        out.append("   ".join(cell.rjust(w) if j == 3 else cell.ljust(w)
                              for j, (cell, w) in enumerate(zip(row, widths))).rstrip())
    out.append(rule)
    trainable = sum(info.params for info in infos)
    out.append(f"Total params: {trainable + running:,}")
    out.append(f"Trainable params: {trainable:,}")
    out.append(
        f"Non-trainable params: {running:,}" + (" (batch-norm running mean and variance)" if running else "")
    )
    out.append(f"Input shape: (None, {', '.join(str(v) for v in spec.input_shape)})")
    return "\n".join(out)


__all__ = [
    "HIDDEN_ACTIVATIONS", "INPUT_SHAPE", "LAYER_TYPES", "Layer", "LayerInfo", "OUTPUT_ACTIVATIONS", "PRESETS",
    "Preset", "Spec", "count_params", "infer_shapes", "load_spec_file", "parse_spec",
    "summary_table",
]
