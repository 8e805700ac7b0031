"""The attribution map on the web page: the API over both real engines against the library, and a
real Chromium drawing a digit and watching the map follow the pen."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.data import Preprocessor  # noqa: E402
from mnistlab.data.drawing import normalize_drawing  # noqa: E402
from mnistlab.inspect.attribution import attribute  # noqa: E402
from mnistlab.models import load_model  # noqa: E402
from mnistlab.runs import make_manifest, write_run  # noqa: E402
from mnistlab.web.app import create_app  # noqa: E402
from test_web_browser import browser  # noqa: E402,F401  (the shared Chromium fixture)
from test_web_helpers import tiny_dataset  # noqa: E402

SPEC = "conv:6:3,pool:2,conv:8:3,pool:2,flatten,dense:16,output:10"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An untrained small CNN (the map's arithmetic does not need training) and a trained NumPy MLP."""
    from mnistlab.cnn.model import build_net, state_to_numpy
    from mnistlab.mlp import MLPConfig, train_on_dataset

    root = tmp_path_factory.mktemp("attribution-runs")
    pre = Preprocessor.fit("unit", tiny_dataset().train_images)
    write_run(root / "cnn", make_manifest("cnn", {"spec": SPEC}, dataset="mnist"),
              state_to_numpy(build_net(SPEC, init="glorot", seed=1)), pre.to_arrays(), [])
    train_on_dataset(MLPConfig(hidden=(16,), epochs=2, batch_size=20), tiny_dataset(), out=root / "mlp")
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs, dataset_loader=tiny_dataset)) as c:
        yield c


def _pad(shift: int = 0) -> np.ndarray:
    img = np.zeros((120, 120), np.uint8)
    img[20:100, 55 + shift : 68 + shift] = 255
    img[20:32, 30:68] = 255
    return img


def _body(img: np.ndarray, **extra) -> dict:
    return {
        "data": base64.b64encode(img.tobytes()).decode(), "width": img.shape[1], "height": img.shape[0],
        **extra,
    }


def _decoded(answer: dict) -> np.ndarray:
    scaled = np.frombuffer(base64.b64decode(answer["data"]), np.uint8).reshape(28, 28).astype(np.float64)
    return (scaled - 128) / 127 * answer["limit"]


@pytest.mark.parametrize("run, method, target", [("cnn", "gradient", None), ("cnn", "gradcam", "4,9"),
                                                 ("mlp", "smoothgrad", "3"), ("mlp", "ig", "4,9")])
def test_predict_returns_the_librarys_map(client, runs, run, method, target):
    body = _body(_pad(), attribution=method, **({"target": target} if target else {}))
    res = client.post("/api/predict", params={"run": run}, json=body)
    assert res.status_code == 200, res.text
    answer = res.json()["attribution"]
    expected = attribute(load_model(runs / run), normalize_drawing(_pad()), target, method)
    assert answer["method"] == method and answer["target"] == expected.target.describe(0)
    assert answer["limit"] == pytest.approx(float(np.abs(expected.maps[0]).max()), rel=1e-4)
    np.testing.assert_allclose(_decoded(answer), expected.maps[0], atol=answer["limit"] / 127)
    assert ("completeness_error" in answer) == (method == "ig")


def test_test_image_with_a_map_and_errors_that_keep_the_update(client):
    res = client.get(
        "/api/test-image", params={"run": "cnn", "index": 4, "attribution": "occlusion", "target": "4"}
    ).json()
    assert res["attribution"]["target"] == "p(4)" and res["probabilities"]
    plain = client.get("/api/test-image", params={"run": "cnn", "index": 4}).json()
    assert "attribution" not in plain
    for run, method, target, fragment in [("mlp", "gradcam", None, "gradcam needs a layer of maps"),
                                          ("cnn", "gradient", "4,4", "names one class twice"),
                                          ("cnn", "lime", None, "unknown attribution method 'lime'")]:
        res = client.post(
            "/api/predict", params={"run": run},
            json=_body(_pad(), attribution=method, **({"target": target} if target else {})),
        )
        assert res.status_code == 200
        assert fragment in res.json()["attribution"]["error"]
        assert len(res.json()["probabilities"]) == 10


# ----- in a real browser -----


@pytest.fixture(scope="module")
def server(runs):
    pytest.importorskip("uvicorn")
    from test_web_browser import _serve

    yield from _serve(create_app(runs, dataset_loader=tiny_dataset))


@pytest.mark.browser
def test_drawing_a_digit_changes_the_map(server, browser):  # noqa: F811 (the fixture imported above)
    from test_web_browser import _canvas_ink, _draw

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/?run=cnn")
    page.wait_for_function("document.getElementById('source').textContent.includes('test image #0')")
    signature = "document.getElementById('attr-map').dataset.signature"
    page.wait_for_function(f"({signature} || '').startsWith('gradient:')")

    _draw(page, [(140, 50), (140, 240)])
    page.wait_for_function("document.getElementById('source').textContent.includes('your drawing')")
    page.wait_for_timeout(300)
    first = page.evaluate(signature)
    assert _canvas_ink(page, "#attr-map") > 20 and _canvas_ink(page, "#attr-overlay") > 20

    _draw(page, [(60, 60), (220, 60)])  # a second stroke: the map must follow
    page.wait_for_function(f"{signature} !== {first!r}")
    second = page.evaluate(signature)
    assert second.startswith("gradient:") and second != first

    page.select_option("#attr-method", "gradcam")
    page.wait_for_function(f"({signature} || '').startsWith('gradcam:')")
    page.fill("#attr-target", "4,9")
    page.press("#attr-target", "Enter")
    page.wait_for_function(f"({signature} || '').startsWith('gradcam:p(4) - p(9)')")
    assert "gradcam of p(4) - p(9)" in page.inner_text("#attr-info")
    assert not errors, errors
    page.close()
