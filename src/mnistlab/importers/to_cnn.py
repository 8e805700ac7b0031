"""Blocks onto a CNN spec and its torch network's parameters (torch is needed here, not in readers)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFileError
from .lower import Block

TORCH_BN_EPS = 1e-5


def _square(block: Block, key: str) -> int:
    a, b = block.main.attrs[key]
    if a != b:
        raise block.main.fail(f"{key} {a}x{b} is not square; mnistlab's CNN spec takes square {key}s")
    return int(a)


def _explicit_pad(
    block: Block, pads: tuple[int, int, int, int], layer: dict[str, Any], before: list[dict[str, Any]]
) -> str | int:
    """(left, right, top, bottom) as the spec says it: one number, or tf_same where that is
    TensorFlow's rule."""
    if len(set(pads)) == 1:
        return "valid" if pads[0] == 0 else int(pads[0])
    from ..cnn.layers import KINDS, find_kind
    from ..cnn.spec import Spec, infer_shapes

    def make(d: dict[str, Any]):
        return find_kind(d["type"]).make({k: v for k, v in d.items() if k != "type"}, block.main.where)

    shape = infer_shapes(Spec(tuple(make(d) for d in before)))[-1].output_shape if before else (1, 28, 28)
    if KINDS["conv"].pads(make({**layer, "pad": "tf_same"}), shape) == tuple(pads):
        return "tf_same"
    raise block.main.fail(
        f"asymmetric padding {pads} (left, right, top, bottom) is not TensorFlow's same; "
        "mnistlab pads evenly or as TensorFlow does"
    )


def spec_layers(blocks: list[Block]) -> tuple[list[dict[str, Any]], list[Block]]:
    """Spec layer dicts, and for each the block it came from (for errors and original names)."""
    layers: list[dict[str, Any]] = []
    owners: list[Block] = []

    def add(layer: dict[str, Any], block: Block) -> None:
        layers.append(layer)
        owners.append(block)

    for block in blocks:
        op = block.main
        if block.type == "conv":
            kernel, stride, dilation = (
                _square(block, "kernel"),
                _square(block, "stride"),
                _square(block, "dilation"),
            )
            pad = op.attrs["pad"]
            if pad == "same" and (stride != 1 or kernel % 2 == 0):
                pad = "tf_same"  # TensorFlow's rule; the spec's plain same is symmetric
            layer = {
                "type": "conv",
                "filters": int(op.arrays["weight"].shape[0]),
                "kernel": kernel,
                "stride": stride,
                "pad": 0,
                "act": block.act,
            }
            if dilation != 1:
                layer["dilation"] = dilation
            layer["pad"] = _explicit_pad(block, pad, layer, layers) if isinstance(pad, tuple) else pad
            if "bias" not in op.arrays:
                layer["bias"] = False
            add(layer, block)
        elif block.type in ("pool", "avgpool"):
            add(
                {"type": block.type, "size": _square(block, "size"), "stride": _square(block, "stride")},
                block,
            )
        elif block.type in ("gap", "flatten"):
            add({"type": block.type}, block)
        else:  # dense, output
            layer = {"type": block.type, "units": int(op.arrays["weight"].shape[0]), "act": block.act}
            if block.type == "dense" and "bias" not in op.arrays:
                layer["bias"] = False
            add(layer, block)
        if block.bn is not None:
            eps = block.bn.attrs["eps"]
            add(
                {
                    "type": "bn",
                    **({"eps": eps} if eps != TORCH_BN_EPS else {}),
                    **({"after_act": True} if block.bn_after_act else {}),
                },
                block,
            )
    return layers, owners


def build_spec(blocks: list[Block]):
    from ..cnn.spec import parse_spec

    layers, owners = spec_layers(blocks)
    try:
        return parse_spec({"input": [1, 28, 28], "layers": layers}), owners
    except ConfigError as exc:
        found = re.match(r"layer (\d+)", str(exc))
        where = (
            owners[int(found.group(1)) - 1].main.where
            if found and int(found.group(1)) <= len(owners)
            else "the model"
        )
        raise ModelFileError(f"{where}: cannot be expressed as a mnistlab CNN ({exc})") from None


def _flatten_order_fix(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Dense weights (out, H*W*C) written for a channels-last flatten, re-ordered for (C, H, W)."""
    c, h, w = shape
    return np.ascontiguousarray(
        weight.reshape(len(weight), h, w, c).transpose(0, 3, 1, 2).reshape(len(weight), -1)
    )


def cnn_state(spec, blocks: list[Block]) -> dict[str, np.ndarray]:
    """The torch network's parameters (a state dict as arrays) holding the blocks' weights."""
    import torch
    from torch import nn

    from ..cnn.model import Net, state_to_numpy

    net = Net(spec)
    infos = {info.name: info for info in net.infos}
    flatten_shape = next((info.input_shape for info in infos.values() if info.layer.type == "flatten"), None)
    modules = [
        m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))
    ]
    targets: list[tuple[Any, Block, str]] = []
    hwc_flatten = any(b.type == "flatten" and b.main.attrs.get("order") == "hwc" for b in blocks)
    seen_dense = False
    for block in blocks:
        if block.type in ("conv", "dense", "output"):
            fix = ""
            if block.type != "conv" and not seen_dense:
                seen_dense = True
                fix = "flatten" if hwc_flatten and flatten_shape and len(flatten_shape) == 3 else ""
            targets.append((block.main, block, fix))
        if block.bn is not None:
            targets.append((block.bn, block, ""))
    if len(targets) != len(modules):  # pragma: no cover - the spec was built from these blocks
        raise ModelFileError(f"internal mismatch: {len(targets)} weighted layers for {len(modules)} modules")
    with torch.no_grad():
        for module, (op, _block, fix) in zip(modules, targets):
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                pairs = [
                    (module.weight, op.arrays["gamma"]),
                    (module.bias, op.arrays["beta"]),
                    (module.running_mean, op.arrays["mean"]),
                    (module.running_var, op.arrays["var"]),
                ]
            else:
                weight = op.arrays["weight"]
                if fix == "flatten":
                    weight = _flatten_order_fix(weight, flatten_shape)
                pairs = [(module.weight, weight)]
                if module.bias is not None:
                    pairs.append(
                        (module.bias, op.arrays.get("bias", np.zeros(module.bias.shape, np.float32)))
                    )
            for target, value in pairs:
                value = np.asarray(value, np.float32)
                if tuple(value.shape) != tuple(target.shape):
                    raise op.fail(
                        f"weights of shape {value.shape} where the model needs {tuple(target.shape)}; "
                        "the weights are mis-shaped or belong to another model"
                    )
                target.copy_(torch.from_numpy(np.array(value, np.float32)))
    return state_to_numpy(net)
