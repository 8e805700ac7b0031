"""Runs exported to ONNX give the run's own probabilities in onnxruntime, preprocessing included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.data.preprocess import Preprocessor
from mnistlab.export_onnx import export_run
from mnistlab.mlp import MLP, MLPConfig
from mnistlab.models import load_model
from mnistlab.runs import make_manifest, write_run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def mlp_run(
    path: Path, activation: str = "tanh", output: str = "softmax", preprocess: str = "standard"
) -> Path:
    rng = np.random.default_rng(3)
    config = MLPConfig(hidden=(20, 12), activation=activation, output=output, preprocess=preprocess, seed=2)
    pre = Preprocessor.fit(preprocess, rng.integers(0, 256, (50, 28, 28)).astype(np.uint8))
    model = MLP(config, preprocess=pre)
    return write_run(
        path, make_manifest("mlp", config.to_dict(), dataset="mnist"), model.get_params(), pre.to_arrays(), []
    )


def cnn_run(path: Path, spec: str) -> Path:
    torch = pytest.importorskip("torch")
    from mnistlab.cnn.model import build_net, state_to_numpy

    torch.manual_seed(0)
    net = build_net(spec, init="default", seed=1)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28)).astype(np.uint8)
    pre = Preprocessor.fit("standard", images)
    manifest = make_manifest("cnn", {"spec": net.spec.to_dict()}, dataset="mnist")
    return write_run(path, manifest, state_to_numpy(net), pre.to_arrays(), [])


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def mnist_images(mnist_test_images):
    return mnist_test_images[:300]


RUNS = {
    "mlp-tanh-softmax": lambda p: mlp_run(p),
    "mlp-relu-sigmoid": lambda p: mlp_run(p, "relu", "sigmoid", "unit"),
    "cnn-bn-same": lambda p: cnn_run(
        p,
        "conv:8:3:pad=same,bn,pool:2,conv:8:4:stride=2:pad=tf_same:act=elu,flatten,"
        "dense:16:act=tanh,bn:eps=0.001,output:10",
    ),
    "cnn-gap-avgpool": lambda p: cnn_run(
        p,
        "conv:6:5:dilation=2:bias=False,avgpool:2,conv:8:3:act=leaky_relu,"
        "bn:after_act=true,gap,output:10:act=sigmoid",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_exported_run_equals_the_run_on_mnist(name, tmp_path, mnist_images):
    run = RUNS[name](tmp_path / "run")
    out = export_run(run, tmp_path / "model.onnx")
    expected = load_model(run).predict_proba(mnist_images)
    assert np.abs(onnx_probabilities(out, mnist_images) - expected).max() < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["mnistlab.kind"] == name[:3] and json.loads(meta["mnistlab.classes"])[9] == "9"
    assert "raw pixels 0..255" in meta["mnistlab.input"]
    names = [node.name for node in onnx.load(str(out)).graph.node]
    assert "preprocess_sub" in names and "preprocess_div" in names


def test_imported_keras_model_round_trips_through_onnx(tmp_path, capsys):
    """Keras file -> run -> ONNX -> run: the same probabilities all the way (random images)."""
    images = np.random.default_rng(5).integers(0, 256, (16, 28, 28)).astype(np.float32)
    first = tmp_path / "from-keras"
    assert main(["import", "keras", str(FIXTURES / "strided_same.keras"), "--out", str(first)]) == 0
    assert main(["export", str(first), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["import", "onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "back")]) == 0
    a, b = load_model(first).predict_proba(images), load_model(tmp_path / "back").predict_proba(images)
    np.testing.assert_allclose(onnx_probabilities(tmp_path / "m.onnx", images), a, atol=1e-5)
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_mlp_export_never_imports_torch(tmp_path):
    run = mlp_run(tmp_path / "run")
    code = (
        "import sys; from mnistlab.export_onnx import export_run; "
        f"export_run({str(run)!r}, {str(tmp_path / 'm.onnx')!r}); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.stdout.strip() == "False"


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and "no such run directory" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
    run = mlp_run(tmp_path / "run")
    (tmp_path / "file").write_text("")
    assert main(["export", str(run), "--out", str(tmp_path / "file" / "m.onnx")]) == 1
    assert "while writing the ONNX file" in capsys.readouterr().err
