"""A Chain onto mnistlab's engines: the NumPy MLP where it can hold the model, else a CNN spec.

Ops are grouped into blocks the way the CNN spec groups layers: a conv or dense op takes the batch
norm and activation that directly follow it; pools, global average pooling and flatten stand alone;
dropout is identity at inference and is recorded, not kept; leading ``rescale`` ops fold into the
pixel preprocessing. Whatever cannot be grouped so is refused with the op's class, name and position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.preprocess import Preprocessor
from ..errors import ConfigError, ModelFileError
from .chain import Chain, Op

MLP_ACTIVATIONS = ("relu", "sigmoid", "tanh")
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")


@dataclass
class Block:
    """One spec layer and the ops it came from."""

    type: str  # conv, pool, avgpool, gap, flatten, dense, output
    ops: list[Op]
    act: str = "linear"
    act_given: bool = False
    bn: Op | None = None
    bn_after_act: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> Op:
        return self.ops[0]


def is_identity(scale: Any, offset: Any) -> bool:
    return bool(np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(offset) == 0.0))


def fold_rescale(chain: Chain) -> tuple[Any, Any, list[Op]]:
    """Leading rescale ops as one (scale, offset), numbers or per-pixel (28, 28) arrays, and the ops
    that follow them."""
    scale, offset, ops = 1.0, 0.0, list(chain.ops)
    while ops and ops[0].kind in ("rescale", "dropout"):
        op = ops.pop(0)
        if op.kind == "rescale":
            scale, offset = scale * op.attrs["scale"], offset * op.attrs["scale"] + op.attrs["offset"]
    for op in ops:
        if op.kind == "rescale":
            raise op.fail(
                "rescaling inside the network is not supported; only at its input, where it joins the "
                "pixel preprocessing"
            )
    return scale, offset, ops


def group_blocks(ops: list[Op]) -> list[Block]:
    blocks: list[Block] = []
    for op in ops:
        last = blocks[-1] if blocks else None
        if op.kind in ("conv", "dense"):
            if op.kind == "dense" and (last is None or last.type in ("conv", "pool", "avgpool")):
                if last is not None:
                    raise op.fail("a Dense layer on maps needs a Flatten (or global pooling) before it")
                blocks.append(Block("flatten", [op]))  # dense on the raw image: flatten it first
            blocks.append(Block(op.kind, [op]))
        elif op.kind in ("maxpool", "avgpool", "gap", "flatten"):
            if op.kind == "flatten" and last is not None and last.type in ("flatten", "gap", "dense"):
                last.ops.append(op)  # already flat
                continue
            blocks.append(Block({"maxpool": "pool"}.get(op.kind, op.kind), [op]))
        elif op.kind == "bn":
            if last is None or last.type not in ("conv", "dense") or last.bn is not None:
                raise op.fail(
                    "batch normalization here cannot be expressed: mnistlab puts it right after a conv "
                    "or dense layer or its activation"
                )
            last.bn, last.bn_after_act = op, last.act_given
            last.ops.append(op)
        elif op.kind == "act":
            name = op.attrs["name"]
            if name == "linear":
                if last is not None:
                    last.ops.append(op)
                continue
            if last is None or last.type not in ("conv", "dense") or last.act_given:
                raise op.fail(
                    f"a {name} activation here cannot be expressed: mnistlab applies one activation right "
                    "after a conv or dense layer (and its batch norm)"
                )
            last.act, last.act_given = name, True
            last.ops.append(op)
        elif op.kind == "dropout":
            if last is not None:
                last.ops.append(op)
                last.notes.append(f"dropout {op.source!r} left out (identity at inference)")
        else:  # pragma: no cover - readers emit only OP_KINDS
            raise op.fail(f"op kind {op.kind} is not supported")
    if not blocks or blocks[-1].type != "dense":
        where = blocks[-1].main.where if blocks else "the model"
        raise ModelFileError(
            f"{where}: the model must end in a Dense layer (Gemm/MatMul) giving the class scores"
        )
    out = blocks[-1]
    if out.bn is not None:
        raise out.bn.fail("batch normalization on the output layer is not supported")
    if out.act == "linear":
        out.notes.append("ends in logits: mnistlab shows softmax of them as probabilities")
        out.act = "softmax"
    elif out.act not in OUTPUT_ACTIVATIONS:
        raise out.main.fail(
            f"the output activation {out.act} gives no probabilities; mnistlab reads softmax, "
            "sigmoid or logits"
        )
    out.type = "output"
    for block in blocks[:-1]:
        if block.act == "softmax":
            raise block.main.fail("softmax is only supported on the output layer")
    return blocks


def mlp_can_hold(blocks: list[Block]) -> bool:
    """Dense layers only, no batch norm, one hidden activation the NumPy MLP knows."""
    body = [b for b in blocks if b.type != "flatten"]
    if any(b.type not in ("dense", "output") or b.bn is not None for b in body):
        return False
    if any(b.type == "flatten" for b in blocks[1:]):
        return False
    hidden = {b.act for b in body[:-1]}
    return len(body) >= 2 and len(hidden) == 1 and hidden <= set(MLP_ACTIVATIONS)


def preprocessing(kind: str, scale: Any, offset: Any, train_images: np.ndarray | None) -> Preprocessor:
    """The user's pixel preprocessing followed by the model's own leading rescaling, as one Preprocessor."""
    if kind == "standard":
        if train_images is None:
            raise ConfigError("--preprocess standard needs the dataset's training images")
        base = Preprocessor.fit("standard", train_images)
    else:
        base = Preprocessor.fit(kind, np.zeros((1, 28, 28), np.uint8))
    if is_identity(scale, offset):
        return base
    if np.any(np.asarray(scale) == 0.0):
        raise ModelFileError("the model's Rescaling multiplies by 0; it ignores its input")
    # ((p - m) / s) * a + b == (p - (m - b s / a)) / (s / a)
    mean = (base.mean - offset * base.scale / scale).astype(np.float32)
    return Preprocessor("affine", mean, (base.scale / scale).astype(np.float32))


def block_label(block: Block) -> list[dict[str, str]]:
    """The original layers a block came from, each once (a Conv2D and its activation are one layer)."""
    seen: dict[str, dict[str, str]] = {}
    for op in block.ops:
        seen.setdefault(op.source, {"name": op.source, "class": op.source_class})
    return list(seen.values())


def check_classes(blocks: list[Block], classes: int) -> None:
    units = blocks[-1].main.arrays["weight"].shape[0]
    if units != classes:
        raise blocks[-1].main.fail(
            f"gives {units} outputs but the dataset has {classes} classes; choose the dataset "
            "the model was trained on (--dataset)"
        )


def mlp_parts(blocks: list[Block], preprocess: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """MLPConfig fields and W1, b1, ... (weights stored (in, out)) for a Dense-only chain."""
    dense = [b for b in blocks if b.type in ("dense", "output")]
    params = {}
    for i, block in enumerate(dense, start=1):
        params[f"W{i}"] = np.ascontiguousarray(block.main.arrays["weight"].T, np.float32)
        bias = block.main.arrays.get("bias")
        params[f"b{i}"] = np.asarray(
            bias if bias is not None else np.zeros(len(params[f"W{i}"].T)), np.float32
        )
    sizes = [params["W1"].shape[0]] + [params[f"W{i}"].shape[1] for i in range(1, len(dense) + 1)]
    if sizes[0] != 784:
        raise dense[0].main.fail(f"takes {sizes[0]} inputs; a 28x28 image has 784")
    config = {
        "input_size": 784,
        "hidden": sizes[1:-1],
        "n_classes": sizes[-1],
        "activation": dense[0].act,
        "output": dense[-1].act,
        "preprocess": preprocess if preprocess in ("unit", "standard", "none") else "none",
    }
    return config, params
