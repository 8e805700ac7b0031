"""ONNX graphs read with the ``onnx`` package and mapped onto the chain of ops by hand.

Why not onnx2torch: its result is a torch.fx module, which a run cannot store without pickle and
which the CNN spec, the summary and the layer names know nothing about; the graphs that
``torch.onnx.export`` and ``tf2onnx`` write for an MNIST network use a dozen op types, each a few
lines here, and mapping them onto the spec is what makes the model a run like any other.

The graph must be a single chain from its one input to its one output. Shape computations beside
it (Shape, Gather, Concat, ... feeding a Reshape) and Constant nodes are allowed; a Reshape or
Flatten after the maps is a flatten, and a Transpose to channels-last right before it (tf2onnx)
says the flatten is channels-last. Element-wise Sub/Div/Mul/Add with constants before the first
layer become the pixel preprocessing. External data files are refused, never opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError
from .chain import Chain, Op
from .safe_files import MAX_FILE_BYTES, read_file_bytes, refuse_other_format, unsafe_member_name

SUPPORTED_OPS = (
    "Conv",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "LeakyRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Add",
    "Softmax",
    "Dropout",
    "Identity",
    "Transpose",
    "Sub",
    "Div",
    "Mul",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Pad",
    "ReduceMean",
)
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Constant", "Slice", "Squeeze", "Cast", "Mul")
_ACTS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu", "Softmax": "softmax"}
_PIXEL_SHAPES = ((28, 28), (1, 28, 28), (784,), (28, 28, 1))


def _onnx():
    from ..extras import require

    return require("onnx", "reading ONNX files")


def read_onnx(path: str | Path) -> Chain:
    path = Path(path)
    onnx = _onnx()
    data = read_file_bytes(path)
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:  # the file is not a whole ONNX model
        refuse_other_format(path, data, "onnx")
        raise ModelFileError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}); the file is truncated or not .onnx"
        ) from None
    graph = model.graph
    if not graph.node:
        refuse_other_format(path, data, "onnx")
        raise ModelFileError(
            f"{path}: the ONNX graph has no nodes; the file is truncated or not an ONNX model"
        )
    return _Reader(path, graph).chain()


class _Reader:
    def __init__(self, path: Path, graph: Any):
        from onnx import numpy_helper

        self.path, self.graph = path, graph
        self.consts: dict[str, np.ndarray] = {}
        for tensor in graph.initializer:
            if tensor.data_location == 1:  # EXTERNAL: torch.onnx.export's default writes weights to FILE.data
                self.load_external(tensor)
            self.consts[tensor.name] = numpy_helper.to_array(tensor)
        # one list of node objects: protobuf hands out a new wrapper on every access to graph.node
        self.nodes = list(graph.node)
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
        self.position = {id(node): i for i, node in enumerate(self.nodes, start=1)}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def load_external(self, tensor: Any) -> None:
        """Weights kept in a file beside the model: only a plain file in the model's own directory,
        read within the offset and length the model states; anything else is refused."""
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{self.path}: initializer {tensor.name!r} keeps its data in {location!r}"
        if not location or unsafe_member_name(location) or len(Path(location).parts) != 1:
            raise ModelFileError(f"{where}, outside the model's directory; refusing the file")
        data_path = self.path.parent / location
        if data_path.is_symlink() or not data_path.is_file():
            raise ModelFileError(f"{where}, which is missing or not a plain file; keep it beside the model")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
            with open(data_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(length if 0 <= length <= MAX_FILE_BYTES else MAX_FILE_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{where}, which cannot be read ({exc})") from None
        if len(data) > MAX_FILE_BYTES or (length >= 0 and len(data) != length):
            raise ModelFileError(f"{where}, which is truncated or too large; export the model again")
        tensor.raw_data = data
        tensor.data_location = 0
        del tensor.external_data[:]

    def fail(self, node: Any, problem: str) -> ModelFileError:
        return ModelFileError(
            f"{self.path}: {node.op_type} node {node.name or node.output[0]!r} "
            f"(node {self.position[id(node)]}): {problem}"
        )

    def attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}

    def const(self, node: Any, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.consts:
            raise self.fail(
                node, f"its {what} is not a constant in the file; only stored weights are supported"
            )
        return np.asarray(self.consts[node.input[index]], np.float32)

    def chain(self) -> Chain:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise ModelFileError(
                f"{self.path}: the graph has {len(inputs)} inputs and {len(self.graph.output)} outputs; "
                "mnistlab imports graphs with one image input and one output"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim]
        if tuple(dims[1:]) not in _PIXEL_SHAPES:
            raise ModelFileError(
                f"{self.path}: input {inputs[0].name!r} has shape {dims}; mnistlab imports models for "
                "28x28x1 images: (N, 1, 28, 28), (N, 28, 28, 1), (N, 28, 28) or (N, 784)"
            )
        current, target = inputs[0].name, self.graph.output[0].name
        ops: list[Op] = []
        self.pixels, self.pending_transpose = True, False
        while current != target:
            data_nodes = [n for n in self.consumers.get(current, []) if n.op_type != "Shape"]
            if len(data_nodes) != 1:
                raise ModelFileError(
                    f"{self.path}: tensor {current!r} feeds {len(data_nodes)} nodes; mnistlab imports "
                    "graphs that are a single chain"
                )
            node = data_nodes[0]
            ops += self.node_ops(node, current)
            current = node.output[0]
        ops = self.merge_pads(self.merge_biases(ops))
        if not ops:
            raise ModelFileError(f"{self.path}: the graph computes nothing mnistlab can show")
        return Chain(ops, "onnx", self.path.name, {"input_shape": dims})

    def node_ops(self, node: Any, data: str) -> list[Op]:
        kind, attrs = node.op_type, self.attrs(node)
        name, position = node.name or node.output[0], self.position[id(node)]

        def op(k: str, a: dict[str, Any] | None = None, **arrays: np.ndarray) -> Op:
            return Op(k, name, kind, position, a or {}, arrays)

        if kind not in SUPPORTED_OPS:
            raise self.fail(node, f"op {kind} is not supported; mnistlab imports {', '.join(SUPPORTED_OPS)}")
        if self.pixels and kind in ("Sub", "Div", "Mul", "Add"):
            value = self.const(node, 1 if node.input[0] == data else 0, "operand").reshape(-1)
            if value.size not in (1, 784):
                raise self.fail(
                    node, f"an element-wise constant of {value.size} values before the first layer"
                )
            value = value[0] if value.size == 1 else value.reshape(28, 28)
            if kind == "Sub" and node.input[0] == data:
                return [op("rescale", {"scale": 1.0, "offset": -value})]
            if kind == "Div" and node.input[0] == data:
                return [op("rescale", {"scale": 1.0 / value, "offset": 0.0})]
            if kind == "Mul":
                return [op("rescale", {"scale": value, "offset": 0.0})]
            if kind == "Add":
                return [op("rescale", {"scale": 1.0, "offset": value})]
            raise self.fail(node, "subtracts or divides the image from a constant; not supported")
        if kind in ("Unsqueeze", "Squeeze", "Cast", "Identity") or (
            self.pixels and kind in ("Reshape", "Transpose", "Flatten")
        ):
            return []  # re-arranges the 784 pixels or the batch axis only
        if kind == "Transpose":
            if list(attrs.get("perm", [])) != [0, 2, 3, 1]:
                raise self.fail(
                    node,
                    f"transposes with perm {attrs.get('perm')}; only a channels-last flatten is supported",
                )
            self.pending_transpose = True
            return []
        if kind in ("Flatten", "Reshape"):
            if kind == "Flatten" and attrs.get("axis", 1) != 1:
                raise self.fail(node, f"flattens from axis {attrs.get('axis')}; only axis 1 is supported")
            if kind == "Reshape" and node.input[1] in self.consts:
                shape = [int(v) for v in self.consts[node.input[1]].reshape(-1)]
                if len(shape) != 2:
                    raise self.fail(
                        node, f"reshapes to {shape}; only a flatten to (N, features) is supported"
                    )
            order = "hwc" if self.pending_transpose else "chw"
            self.pending_transpose = False
            return [op("flatten", {"order": order})]
        if self.pending_transpose:
            raise self.fail(node, "follows a Transpose that does not lead to a flatten; not supported")
        self.pixels = False
        if kind == "Pad":
            return [op("pad", {"pads": self.zero_pads(node, attrs)})]
        if kind in _ACTS:
            if kind == "Elu" and abs(attrs.get("alpha", 1.0) - 1.0) > 1e-6:
                raise self.fail(node, f"Elu with alpha {attrs.get('alpha')}; only alpha 1 is supported")
            if kind == "Softmax" and attrs.get("axis", -1) not in (-1, 1):
                raise self.fail(
                    node, f"softmax over axis {attrs.get('axis')}; only the class axis is supported"
                )
            return [op("act", {"name": _ACTS[kind]})]
        if kind == "LeakyRelu":
            if abs(attrs.get("alpha", 0.01) - 0.01) > 1e-7:
                raise self.fail(
                    node, f"LeakyRelu with slope {attrs.get('alpha')}; only slope 0.01 is supported"
                )
            return [op("act", {"name": "leaky_relu"})]
        if kind in ("Dropout",):
            return [op("dropout", {"rate": 0.0})]
        if kind == "Conv":
            weight = self.const(node, 1, "weight")
            if weight.ndim != 4 or attrs.get("group", 1) != 1:
                raise self.fail(node, "only 2-D convolutions without groups are supported")
            named = {"weight": weight}
            if len(node.input) > 2 and node.input[2]:
                named["bias"] = self.const(node, 2, "bias")
            return [
                op(
                    "conv",
                    {
                        "kernel": tuple(weight.shape[2:]),
                        "stride": tuple(attrs.get("strides", (1, 1))),
                        "pad": self.padding(node, attrs),
                        "dilation": tuple(attrs.get("dilations", (1, 1))),
                    },
                    **named,
                )
            ]
        if kind in ("MaxPool", "AveragePool"):
            if (
                any(attrs.get("pads", [0]))
                or attrs.get("ceil_mode", 0)
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID")
                or any(d != 1 for d in attrs.get("dilations", [1]))
            ):
                raise self.fail(node, "pooling with padding, ceil_mode or dilation is not supported")
            size = tuple(attrs["kernel_shape"])
            return [
                op(
                    "maxpool" if kind == "MaxPool" else "avgpool",
                    {"size": size, "stride": tuple(attrs.get("strides", size))},
                )
            ]
        if kind == "GlobalAveragePool":
            return [op("gap")]
        if kind == "ReduceMean":  # the dynamo exporter's global average pooling
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = [int(v) for v in self.consts.get(node.input[1], np.array([])).reshape(-1)]
            if sorted(int(a) % 4 for a in (axes or [])) != [2, 3]:
                raise self.fail(
                    node, f"a mean over axes {axes}; only the mean over height and width is supported"
                )
            return [op("gap")]
        if kind == "BatchNormalization":
            return [
                op(
                    "bn",
                    {"eps": float(attrs.get("epsilon", 1e-5))},
                    gamma=self.const(node, 1, "scale"),
                    beta=self.const(node, 2, "bias"),
                    mean=self.const(node, 3, "mean"),
                    var=self.const(node, 4, "variance"),
                )
            ]
        if kind == "Gemm":
            if attrs.get("transA", 0) or node.input[0] != data:
                raise self.fail(
                    node, "Gemm with the data as its second operand or transposed is not supported"
                )
            b = self.const(node, 1, "weight") * float(attrs.get("alpha", 1.0))
            weight = b if attrs.get("transB", 0) else b.T
            bias = (
                self.const(node, 2, "bias") * float(attrs.get("beta", 1.0))
                if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[0], np.float32)
            )
            return [
                op(
                    "dense",
                    {},
                    weight=np.ascontiguousarray(weight),
                    bias=np.broadcast_to(bias, weight.shape[:1]).copy(),
                )
            ]
        if kind == "MatMul":
            if node.input[0] != data:
                raise self.fail(node, "MatMul with the data as its second operand is not supported")
            weight = np.ascontiguousarray(self.const(node, 1, "weight").T)
            return [op("dense", {}, weight=weight, bias=np.zeros(weight.shape[0], np.float32))]
        if kind == "Add":
            bias = self.const(node, 1 if node.input[0] == data else 0, "bias").reshape(-1)
            return [op("bias", {}, bias=bias)]
        raise self.fail(node, f"op {kind} is not supported here")  # Sub/Div/Mul after the first layer

    @staticmethod
    def merge_biases(ops: list[Op]) -> list[Op]:
        """An Add of a constant right after a MatMul (or Conv) is that layer's bias."""
        merged: list[Op] = []
        for op in ops:
            if op.kind != "bias":
                merged.append(op)
                continue
            previous = merged[-1] if merged else None
            bias = op.arrays["bias"]
            if (
                previous is None
                or previous.kind not in ("dense", "conv")
                or bias.size != previous.arrays["weight"].shape[0]
            ):
                raise op.fail("an Add that is not the bias of the layer before it is not supported")
            previous.arrays["bias"] = previous.arrays.get("bias", np.zeros(bias.size, np.float32)) + bias
        return merged

    def zero_pads(self, node: Any, attrs: dict[str, Any]) -> tuple[int, int, int, int]:
        """A constant zero Pad of height and width only, as (left, right, top, bottom)."""
        mode = attrs.get("mode", b"constant")
        value = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        pads = (
            [int(v) for v in self.const(node, 1, "pads").reshape(-1)]
            if len(node.input) > 1
            else attrs.get("pads")
        )
        if (
            mode not in (b"constant", "constant")
            or (value is not None and np.any(value != 0))
            or pads is None
            or len(pads) != 8
            or any(pads[i] for i in (0, 1, 4, 5))
        ):
            raise self.fail(node, "only zero padding of height and width is supported")
        return pads[3], pads[7], pads[2], pads[6]

    @staticmethod
    def merge_pads(ops: list[Op]) -> list[Op]:
        """A zero Pad right before a Conv is that conv's padding."""
        merged: list[Op] = []
        for i, op in enumerate(ops):
            if op.kind != "pad":
                merged.append(op)
                continue
            following = ops[i + 1] if i + 1 < len(ops) else None
            if following is None or following.kind != "conv":
                raise op.fail("padding that does not feed a Conv is not supported")
            own = following.attrs["pad"]
            own = (0,) * 4 if own == "valid" else (own,) * 4 if isinstance(own, int) else None
            if own is None:
                raise op.fail("padding before a Conv with auto_pad is not supported")
            following.attrs["pad"] = tuple(a + b for a, b in zip(op.attrs["pads"], own))
        return merged

    def padding(self, node: Any, attrs: dict[str, Any]) -> Any:
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "SAME_UPPER":
            return "same"
        if auto not in ("NOTSET", "VALID"):
            raise self.fail(node, f"auto_pad {auto} is not supported")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(set(pads)) != 1:
            raise self.fail(node, f"asymmetric padding {pads} is not supported")
        return "valid" if pads[0] == 0 else int(pads[0])
