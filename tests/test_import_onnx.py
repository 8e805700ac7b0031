"""ONNX graphs from torch.onnx.export and tf2onnx-style graphs import with onnxruntime's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.importers import import_model
from mnistlab.models import load_model
from mnistlab.runs import read_manifest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from torch import nn
from torch.nn import functional as F


class Mixed(nn.Module):
    """Conv with padding and stride, batch norm, every activation, average and max pooling,
    dilation without bias, a view() flatten (Shape/Gather/Reshape in ONNX), dropout, logits out."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.b1 = nn.BatchNorm2d(6, eps=1e-3)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(8, 8, 3, dilation=2, bias=False)
        self.mp = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.fc1 = nn.Linear(8, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = self.pool(torch.tanh(self.c2(x)))
        x = self.mp(F.elu(self.c3(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.sigmoid(self.fc1(self.drop(x))))


class GapMatMul(nn.Module):
    """LeakyReLU, global average pooling and a hand-written x @ W + b (MatMul + Add), softmax out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, stride=2)
        self.weight = nn.Parameter(torch.randn(8, 10) * 0.3)
        self.bias = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.leaky_relu(self.conv(x)), 1).flatten(1)
        return torch.softmax(x @ self.weight + self.bias, dim=1)


def flat_mlp():
    return nn.Sequential(
        nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10), nn.Softmax(dim=1)
    )


def _randomize_bn(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module.eval()


def export(module, path: Path, shape=(1, 1, 28, 28), dynamo: bool = False) -> Path:
    """torch.onnx.export with the TorchScript exporter or the dynamo one (torch's default, which
    writes the weights into PATH.data beside the model)."""
    import warnings

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            torch.onnx.export(
                module, (torch.zeros(*shape),), str(path), dynamic_shapes=({0: torch.export.Dim("n")},)
            )
        else:
            torch.onnx.export(
                module,
                (torch.zeros(*shape),),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            )
    return path


def tf2onnx_style(path: Path) -> Path:
    """What tf2onnx writes for a channels-last Keras CNN: NHWC input, Transposes around the convs,
    a channels-last Reshape flatten and MatMul + Add."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "k"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "kb"),
        numpy_helper.from_array(np.array([-1, 26 * 26 * 4], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 0.05, (26 * 26 * 4, 10)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "k", "kb"], ["conv"], name="conv2d"),
        helper.make_node("Relu", ["conv"], ["relu"], name="conv2d_relu"),
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Reshape", ["nhwc", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["mm"], name="dense_matmul"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="dense_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "tf2onnx-like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 28, 28, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _case(name: str, tmp_path: Path, dynamo: bool = False) -> tuple[Path, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mixed":
        return export(_randomize_bn(Mixed()), tmp_path / "mixed.onnx", dynamo=dynamo), (1, 28, 28)
    if name == "gap_matmul":
        return export(GapMatMul(), tmp_path / "gap.onnx", dynamo=dynamo), (1, 28, 28)
    if name == "flat_mlp":
        return export(flat_mlp(), tmp_path / "mlp.onnx", (1, 784), dynamo=dynamo), (784,)
    return tf2onnx_style(tmp_path / "tf.onnx"), (28, 28, 1)


@pytest.fixture(scope="module")
def mnist_images(mnist_test_images):
    return mnist_test_images[:200]


def _reference(path: Path, images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(
        None, {session.get_inputs()[0].name: (images / 255.0).astype(np.float32).reshape(-1, *shape)}
    )[0]
    if not np.allclose(out.sum(1), 1, atol=1e-4):
        out = np.exp(out - out.max(1, keepdims=True))
        out /= out.sum(1, keepdims=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,exporter",
    [
        ("mixed", "torchscript"),
        ("gap_matmul", "torchscript"),
        ("flat_mlp", "torchscript"),
        ("tf2onnx", "onnx.helper"),
        ("mixed", "dynamo"),
        ("gap_matmul", "dynamo"),
        ("flat_mlp", "dynamo"),
    ],
)
def test_imported_graph_equals_onnxruntime_on_mnist(name, exporter, tmp_path, mnist_images):
    path, shape = _case(name, tmp_path, dynamo=exporter == "dynamo")
    model = load_model(import_model("onnx", path, tmp_path / "run"))
    difference = np.abs(model.predict_proba(mnist_images) - _reference(path, mnist_images, shape)).max()
    assert difference < 1e-5, difference


def test_graphs_map_onto_the_engines_and_keep_node_names(tmp_path):
    path, _ = _case("mixed", tmp_path)
    manifest = read_manifest(import_model("onnx", path, tmp_path / "mixed"))
    assert manifest["kind"] == "cnn"
    spec = manifest["spec_string"]
    assert (
        spec.startswith("conv:6:3:stride=2:pad=1") and "avgpool:2" in spec and "dilation=2:bias=False" in spec
    )
    assert "act=elu" in spec and "act=tanh" in spec and "dense:20:act=sigmoid" in spec
    assert "ends in logits" in " ".join(manifest["imported"]["notes"])
    gap = read_manifest(import_model("onnx", _case("gap_matmul", tmp_path)[0], tmp_path / "gap"))[
        "spec_string"
    ]
    assert gap == "conv:8:5:stride=2:act=leaky_relu,gap,output:10"
    assert (
        read_manifest(import_model("onnx", _case("flat_mlp", tmp_path)[0], tmp_path / "mlp"))["kind"] == "mlp"
    )
    tf = read_manifest(import_model("onnx", _case("tf2onnx", tmp_path)[0], tmp_path / "tf"))
    assert tf["imported"]["layers"]["conv1"][0] == {"name": "conv2d", "class": "Conv"}
    assert tf["imported"]["layers"]["output"][0]["name"] == "dense_matmul"


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc((x + self.conv(x)).flatten(1))


class Sine(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(torch.sin(x.flatten(1)))


def _fails(capsys, tmp_path, path, *fragments):
    out = tmp_path / "runs" / "bad"
    assert main(["import", "onnx", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()


def test_bad_graphs_are_refused_with_one_line(capsys, tmp_path):
    torch.manual_seed(0)
    _fails(capsys, tmp_path, export(Residual(), tmp_path / "res.onnx"), "feeds 2 nodes", "single chain")
    _fails(capsys, tmp_path, export(Sine(), tmp_path / "sin.onnx"), "Sin node", "(node ", "not supported")
    _fails(
        capsys,
        tmp_path,
        export(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), tmp_path / "five.onnx"),
        "gives 5 outputs but the dataset has 10 classes",
    )
    _fails(
        capsys,
        tmp_path,
        export(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), tmp_path / "rgb.onnx", (1, 3, 32, 32)),
        "[-1, 3, 32, 32]",
        "28x28x1",
    )
    good = export(flat_mlp(), tmp_path / "good.onnx", (1, 784))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:3000])
    _fails(capsys, tmp_path, truncated, "truncated")


def test_external_weights_beside_the_model_are_read_and_escaping_ones_refused(capsys, tmp_path):
    model = onnx.load(str(export(flat_mlp(), tmp_path / "m.onnx", (1, 784))))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28)).astype(np.float32)
    run = import_model("onnx", tmp_path / "ext.onnx", tmp_path / "ext-run")
    np.testing.assert_allclose(
        load_model(run).predict_proba(images), _reference(tmp_path / "m.onnx", images, (784,)), atol=1e-6
    )
    escaping = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    (tmp_path / "escape.onnx").write_bytes(escaping.SerializeToString())
    _fails(capsys, tmp_path, tmp_path / "escape.onnx", "'../../etc/passwd'", "outside the model's directory")
    (tmp_path / "ext.onnx.data").write_bytes(b"short")
    _fails(capsys, tmp_path, tmp_path / "ext.onnx", "truncated")
