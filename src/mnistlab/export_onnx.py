"""Runs as ONNX files that Netron, onnxruntime or any ONNX tool opens.

The file takes raw pixels, ``pixels`` float32 (N, 28, 28) with values 0..255, and gives
``probabilities`` (N, classes). The run's preprocessing is inside the graph as two nodes,
``preprocess_sub`` (the per-pixel mean) and ``preprocess_div`` (the per-pixel scale), so nothing has
to be done to images first; the metadata says so too (``mnistlab.input``, ``mnistlab.preprocess``),
with the class names, the run's kind and mnistlab's version.

CNN runs go through ``torch.onnx.export`` (the TorchScript exporter: the dynamo one needs
onnxscript, which this saves). MLP runs are written with ``onnx.helper`` from the NumPy weights, so
exporting an MLP never imports torch.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError
from .runs import read_run
from .safe_write import atomic_write_bytes, guard

OPSET = 17
FORMATS = ("onnx",)
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"


def _onnx():
    from .extras import require

    return require("onnx", "exporting to ONNX")


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Write the run's model to ``out``; returns the path written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    onnx = _onnx()
    record = read_run(Path(run_dir))
    from .data import DATASETS
    from .data.preprocess import Preprocessor

    pre = Preprocessor.from_arrays(record.preprocess)
    dataset = record.manifest.get("dataset", "mnist")
    classes = list(DATASETS[dataset].class_names) if dataset in DATASETS else []
    model = _mlp_graph(onnx, record, pre) if record.kind == "mlp" else _cnn_graph(onnx, record, pre)
    metadata = {
        "mnistlab.version": __version__,
        "mnistlab.kind": record.kind,
        "mnistlab.dataset": dataset,
        "mnistlab.classes": json.dumps(classes),
        "mnistlab.preprocess": pre.kind,
        "mnistlab.input": "raw pixels 0..255, float32 (N, 28, 28); preprocessing is inside the graph "
        "(nodes preprocess_sub and preprocess_div)",
        "mnistlab.run": Path(run_dir).name,
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "mnistlab", __version__
    onnx.checker.check_model(model)
    out = Path(out)
    with guard(out, "the ONNX file", "the run is unchanged", "another --out"):
        atomic_write_bytes(out, model.SerializeToString())
    return out


def _mlp_graph(onnx, record, pre):
    from onnx import TensorProto, helper, numpy_helper

    from .mlp.config import MLPConfig

    config = MLPConfig.from_dict(record.config)
    init = [
        numpy_helper.from_array(pre.mean.reshape(1, -1).astype(np.float32), "preprocess_mean"),
        numpy_helper.from_array(pre.scale.reshape(1, -1).astype(np.float32), "preprocess_scale"),
        numpy_helper.from_array(np.array([-1, config.input_size], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Reshape", [INPUT_NAME, "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Sub", ["flat", "preprocess_mean"], ["centred"], name="preprocess_sub"),
        helper.make_node("Div", ["centred", "preprocess_scale"], ["inputs"], name="preprocess_div"),
    ]
    x = "inputs"
    n_layers = len(config.hidden) + 1
    activation = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[config.activation]
    for i in range(1, n_layers + 1):
        name = f"hidden{i}" if i < n_layers else "output"
        init += [
            numpy_helper.from_array(np.asarray(record.weights[f"W{i}"], np.float32), f"{name}.weight"),
            numpy_helper.from_array(np.asarray(record.weights[f"b{i}"], np.float32), f"{name}.bias"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}_matmul"], name=f"{name}_matmul"),
            helper.make_node(
                "Add", [f"{name}_matmul", f"{name}.bias"], [f"{name}_linear"], name=f"{name}_add"
            ),
        ]
        if i < n_layers:
            nodes.append(
                helper.make_node(activation, [f"{name}_linear"], [name], name=f"{name}_{config.activation}")
            )
            x = name
    if config.output == "softmax":
        nodes.append(
            helper.make_node("Softmax", ["output_linear"], [OUTPUT_NAME], name="output_softmax", axis=1)
        )
    else:
        nodes.append(helper.make_node("Sigmoid", ["output_linear"], [OUTPUT_NAME], name="output_sigmoid"))
    graph = helper.make_graph(
        nodes,
        f"mnistlab-mlp-{'-'.join(map(str, config.sizes))}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", config.n_classes])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _static_pads(onnx, model, net) -> None:
    """The TorchScript exporter computes a ZeroPad2d's amounts at run time (a dozen shape nodes);
    give each Pad its amounts as a constant and drop the nodes that computed them."""
    from onnx import numpy_helper

    amounts = [
        (m.padding[2], m.padding[0], m.padding[3], m.padding[1])  # (top, left, bottom, right)
        for m in net.modules()
        if type(m).__name__ == "ZeroPad2d"
    ]
    pads = [node for node in model.graph.node if node.op_type == "Pad"]
    if len(pads) != len(amounts):
        return
    for i, (node, (top, left, bottom, right)) in enumerate(zip(pads, amounts)):
        name = f"pad{i}_amounts"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), name)
        )
        node.input[1] = name
    outputs = {o.name for o in model.graph.output}
    while True:  # drop nodes whose outputs nothing reads any more
        used = {name for node in model.graph.node for name in node.input} | outputs
        dead = [node for node in model.graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)


def _cnn_graph(onnx, record, pre):
    import torch
    from torch import nn

    from .cnn.model import CNN

    cnn = CNN.from_run(record)

    class WithPreprocessing(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = cnn.net
            self.register_buffer("mean", torch.from_numpy(pre.mean))
            self.register_buffer("scale", torch.from_numpy(pre.scale))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 28, 28) raw pixels
            inputs = (pixels - self.mean) / self.scale
            return self.net.probabilities(self.net(inputs.unsqueeze(1)))  # (N, classes)

    wrapper = WithPreprocessing().eval()
    # export each block as written, so every layer keeps its own nodes and its whole maps
    cnn.net.fuse_pooling = cnn.net.crop = False
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter warns that the dynamo one is the default now; that one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 28, 28),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    _static_pads(onnx, model, cnn.net)
    for node in model.graph.node:  # name the preprocessing nodes as the MLP export does
        if node.op_type == "Sub" and "mean" in " ".join(node.input):
            node.name = "preprocess_sub"
        elif node.op_type == "Div" and "scale" in " ".join(node.input):
            node.name = "preprocess_div"
    return model
