"""The compare and OIP endpoints: the inspect library's answers, unchanged, as JSON and figures."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
inspect_lib = pytest.importorskip("mnistlab.inspect")
if not hasattr(inspect_lib, "compare_classes"):
    pytest.skip("mnistlab.inspect is not merged into this tree yet", allow_module_level=True)

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from test_web_helpers import TinyModel, tiny_dataset, write_tiny_run  # noqa: E402


class GradModel(TinyModel):
    """TinyModel with the input gradient OIPs need (finite differences are too slow; this is exact)."""

    def input_gradient(self, inputs, layer, units):
        x = np.asarray(inputs, np.float32)
        units = np.asarray(units)
        if layer != "conv1":
            raise NotImplementedError
        # conv1 map u = relu(2x2 patches @ k[:, u]), mean over the 13x13 crop.
        patches = x.reshape(len(x), 14, 2, 14, 2).transpose(0, 1, 3, 2, 4).reshape(len(x), 14, 14, 4)
        pre = patches @ self.w["k"]  # (N, 14, 14, 4)
        values, grads = np.zeros(len(x), np.float32), np.zeros_like(x)
        for i, u in enumerate(units):
            active = (pre[i, :13, :13, u] > 0).astype(np.float32) / (13 * 13)  # (13, 13)
            values[i] = np.maximum(pre[i, :13, :13, u], 0).mean()
            g = np.zeros((14, 14, 4), np.float32)
            g[:13, :13] = active[..., None] * self.w["k"][:, u]
            grads[i] = g.reshape(14, 14, 2, 2).transpose(0, 2, 1, 3).reshape(28, 28)
        return values, grads

    @classmethod
    def from_run_dir(cls, run_dir):
        base = TinyModel.from_run_dir(run_dir)
        return cls(base.w, base.preprocess)


@pytest.fixture
def client(tmp_path):
    write_tiny_run(tmp_path / "tiny")
    from mnistlab.web.app import create_app

    with TestClient(
        create_app(tmp_path, model_loader=GradModel.from_run_dir, dataset_loader=tiny_dataset)
    ) as c:
        yield c


def _png(b64: str) -> bytes:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_compare_matches_the_library(client, tmp_path):
    res = client.get("/api/compare", params={"run": "tiny", "a": 4, "b": 9, "n": 2})
    assert res.status_code == 200, res.text
    body = res.json()
    expected = inspect_lib.compare_classes(
        GradModel.from_run_dir(tmp_path / "tiny"), tiny_dataset(), 4, 9, n=2
    )
    assert body["layers"] == list(expected.layers)
    assert body["a_images"] == expected.a.names() and body["b_images"] == expected.b.names()
    summary, ranking = body["tables"]
    assert [row[:3] for row in summary["rows"]] == [
        [r["layer"], r["red"], r["yellow"]] for r in expected.summary()
    ]
    top = expected.table(15)
    assert [row[:3] for row in ranking["rows"]] == [[r["layer"], r["kind"], r["unit"]] for r in top]
    assert ranking["rows"][0][3] == pytest.approx(top[0]["auc"])
    assert len(body["figures"]) == len(expected.layers) + 1
    for fig in body["figures"]:
        _png(fig["png"])


def test_compare_bad_input(client):
    def error(params, status):
        r = client.get("/api/compare", params={"run": "tiny", **params})
        assert r.status_code == status, r.text
        return r.json()["error"]

    assert "different" in error({"a": 3, "b": 3}, 400)
    assert "not a class" in error({"a": 3, "b": 10}, 400)
    assert "not a class" in error({"a": -1, "b": 2}, 400)
    assert "valid layers" in error({"a": 3, "b": 4, "layer": "nope"}, 404)
    error({"a": 3}, 422)
    error({"a": 3, "b": 4, "n": 99}, 422)
    assert "unknown run" in error({"run": "nope", "a": 1, "b": 2}, 404)
    assert "invalid run name" in error({"run": "../tiny", "a": 1, "b": 2}, 400)


def test_oip_gallery_matches_the_library(client, tmp_path):
    res = client.get("/api/oip", params={"run": "tiny", "layer": "conv1", "steps": 20})
    assert res.status_code == 200, res.text
    body = res.json()
    expected = inspect_lib.optimize_inputs(GradModel.from_run_dir(tmp_path / "tiny"), "conv1", steps=20)
    assert body["layer"] == "conv1" and body["units"] == 4 == len(body["tiles"])
    for tile, image, dead in zip(body["tiles"], expected.images, expected.dead):
        pixels = np.frombuffer(base64.b64decode(tile["image"]), np.uint8).reshape(28, 28)
        np.testing.assert_allclose(pixels, np.clip(np.rint(image), 0, 255), atol=1)
        assert tile["dead"] == bool(dead)
    # The default layer is the library's: the last conv layer.
    assert client.get("/api/oip", params={"run": "tiny", "steps": 5}).json()["layer"] == "conv1"


def test_oip_bad_input(client):
    assert client.get("/api/oip", params={"run": "tiny", "layer": "nope"}).status_code == 404
    assert client.get("/api/oip", params={"run": "tiny", "steps": 0}).status_code == 422
    assert client.get("/api/oip", params={"run": "tiny", "steps": 10_000}).status_code == 422
    assert client.get("/api/oip", params={"run": "/etc", "layer": "conv1"}).status_code == 400


def test_answers_are_cached_and_dropped_when_the_run_changes(client, tmp_path):
    first = client.get("/api/oip", params={"run": "tiny", "layer": "conv1", "steps": 10}).json()
    again = client.get("/api/oip", params={"run": "tiny", "layer": "conv1", "steps": 10}).json()
    assert first == again
    write_tiny_run(tmp_path / "tiny", seed=9, overwrite=True)
    changed = client.get("/api/oip", params={"run": "tiny", "layer": "conv1", "steps": 10}).json()
    assert [t["image"] for t in changed["tiles"]] != [t["image"] for t in first["tiles"]]
