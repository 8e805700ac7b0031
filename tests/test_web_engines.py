"""The web app over real engines: a tiny NumPy MLP trained here and a tiny PyTorch CNN, via load_model."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.data import Preprocessor  # noqa: E402
from mnistlab.data.drawing import normalize_drawing  # noqa: E402
from mnistlab.models import load_model  # noqa: E402
from mnistlab.runs import make_manifest, write_run  # noqa: E402
from mnistlab.web.app import create_app  # noqa: E402
from test_web_helpers import tiny_dataset  # noqa: E402


def _drawing() -> np.ndarray:
    img = np.zeros((120, 120), np.uint8)
    img[20:100, 55:68] = 255
    img[20:32, 40:68] = 255
    return img


def _check_run(runs, name):
    model = load_model(runs / name)
    with TestClient(create_app(runs, dataset_loader=tiny_dataset)) as c:
        info = c.get("/api/run", params={"run": name}).json()
        assert [layer["name"] for layer in info["layers"]] == model.layer_names()
        img = _drawing()
        body = {"data": base64.b64encode(img.tobytes()).decode(), "width": 120, "height": 120}
        res = c.post("/api/predict", params={"run": name}, json=body)
        assert res.status_code == 200, res.text
        res = res.json()
        expected = model.activations(normalize_drawing(img)[None])
        np.testing.assert_allclose(res["probabilities"], expected["output"][0], rtol=1e-4, atol=1e-6)
        for layer in res["layers"]:
            assert layer["shape"] == list(expected[layer["name"]].shape[1:])
            assert layer["hi"] == pytest.approx(float(expected[layer["name"]][0].max()), rel=1e-4, abs=1e-6)
        test = c.get("/api/test-image", params={"run": name, "index": 5}).json()
        assert test["probabilities"] == pytest.approx(
            model.predict_proba(tiny_dataset().test_images[5:6])[0].tolist(), rel=1e-4, abs=1e-6
        )
        cm = np.array(c.get("/api/confusion", params={"run": name}).json()["matrix"])
        assert cm.sum() == len(tiny_dataset().test_labels)


def test_a_trained_numpy_mlp(tmp_path):
    from mnistlab.mlp import MLPConfig, train_on_dataset

    runs = tmp_path / "runs"
    train_on_dataset(MLPConfig(hidden=(16, 8), epochs=2, batch_size=20), tiny_dataset(), out=runs / "mlp")
    _check_run(runs, "mlp")


def test_a_pytorch_cnn(tmp_path):
    pytest.importorskip("torch")
    from mnistlab.cnn.model import build_net, state_to_numpy

    spec = "conv:4:3,pool:2,conv:6:3,flatten,dense:12,output:10"
    runs = tmp_path / "runs"
    pre = Preprocessor.fit("unit", tiny_dataset().train_images)
    manifest = make_manifest("cnn", {"spec": spec}, dataset="mnist")
    write_run(runs / "cnn", manifest, state_to_numpy(build_net(spec, seed=0)), pre.to_arrays(), [])
    _check_run(runs, "cnn")
