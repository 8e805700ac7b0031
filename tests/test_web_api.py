"""Every endpoint of the web app and every bad input the issue lists, through FastAPI's TestClient."""

from __future__ import annotations

import base64
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import warnings  # noqa: E402

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=".*httpx2"
    )  # starlette's note; httpx is what the dev extra installs
    from fastapi.testclient import TestClient  # noqa: E402

from test_web_helpers import TinyModel, tiny_app, tiny_dataset, write_tiny_run  # noqa: E402


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_tiny_run(root / "tiny")
    write_tiny_run(root / "group" / "other", seed=1)
    return root


@pytest.fixture
def client(runs):
    with TestClient(tiny_app(runs)) as c:
        yield c


def _seven(size: int = 280) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    s = size // 280 or 1
    img[60 * s : 80 * s, 60 * s : 220 * s] = 255
    for y in range(80 * s, 250 * s):
        x = int(220 * s - (y - 80 * s) * 0.5)
        img[y, max(0, x - 10 * s) : x + 10 * s] = 255
    return img


def _b64_body(img: np.ndarray, **extra) -> dict:
    return {
        "data": base64.b64encode(img.tobytes()).decode(), "width": img.shape[1], "height": img.shape[0],
        **extra,
    }


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"]
    return body["error"]


# ----- pages and listing -----


def test_index_and_static_assets_are_served_without_any_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.text) > 1000
    combined = page.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    # The page works offline: nothing is fetched from another host.
    assert "http://" not in combined.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in combined and "//cdn" not in combined


def test_health(client):
    assert client.get("/api/health").json()["status"] == "ok"


def test_runs_lists_nested_runs_with_their_summary(client, runs):
    body = client.get("/api/runs").json()
    assert body["runs_dir"] == str(runs)
    names = [r["name"] for r in body["runs"]]
    assert names == ["group/other", "tiny"]
    assert body["runs"][1]["kind"] == "mlp" and body["runs"][1]["metrics"] == {"test_accuracy": 0.5}


def test_runs_when_the_directory_does_not_exist(tmp_path):
    with TestClient(tiny_app(tmp_path / "missing")) as c:
        assert c.get("/api/runs").json()["runs"] == []
        assert "holds no runs" in _error(c.get("/api/run", params={"run": "x"}), 404)


def test_run_info_has_layers_shapes_classes_and_history(client):
    info = client.get("/api/run", params={"run": "tiny"}).json()
    assert info["kind"] == "mlp" and info["dataset"] == "mnist"
    assert info["layers"] == [
        {"name": "conv1", "shape": [4, 13, 13]},
        {"name": "dense1", "shape": [16]},
        {"name": "output", "shape": [10]},
    ]
    assert info["class_names"] == [str(d) for d in range(10)]
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3]


def test_history_endpoint(client):
    hist = client.get("/api/history", params={"run": "group/other"}).json()["history"]
    assert hist[0]["loss"] == pytest.approx(2.0)


# ----- predict -----


def test_predict_a_drawing_matches_the_library(client, runs):
    img = _seven()
    r = client.post("/api/predict", params={"run": "tiny"}, json=_b64_body(img))
    assert r.status_code == 200, r.text
    res = r.json()
    from mnistlab.data.drawing import normalize_drawing

    seen = normalize_drawing(img)
    np.testing.assert_array_equal(_decode(res["image"]).reshape(28, 28), np.rint(seen).astype(np.uint8))
    model = TinyModel.from_run_dir(runs / "tiny")
    expected = model.activations(seen[None])
    np.testing.assert_allclose(res["probabilities"], expected["output"][0], rtol=1e-5, atol=1e-7)
    assert res["predicted"] == int(expected["output"][0].argmax())
    assert [layer["name"] for layer in res["layers"]] == ["conv1", "dense1", "output"]
    for layer in res["layers"]:
        values = expected[layer["name"]][0]
        assert layer["shape"] == list(values.shape)
        data = _decode(layer["data"])
        assert data.size == values.size
        assert layer["hi"] == pytest.approx(float(values.max()), rel=1e-5)
        # The brightest unit is the largest activation.
        assert data.argmax() == values.ravel().argmax()
    assert res["blank"] is False and res["server_ms"] >= 0


def test_predict_accepts_pixel_rows_and_exact_28x28_images(client):
    img = tiny_dataset().test_images[3]
    a = client.post(
        "/api/predict", params={"run": "tiny"}, json={"pixels": img.tolist(), "drawing": False}
    ).json()
    b = client.get("/api/test-image", params={"run": "tiny", "index": 3}).json()
    assert a["probabilities"] == pytest.approx(b["probabilities"])
    np.testing.assert_array_equal(_decode(a["image"]).reshape(28, 28), img)


def test_predict_selected_layers_only(client):
    res = client.post(
        "/api/predict", params={"run": "tiny"}, json=_b64_body(_seven(), layers=["dense1"])
    ).json()
    assert [layer["name"] for layer in res["layers"]] == ["dense1"]
    assert len(res["probabilities"]) == 10


def test_blank_drawing_is_flagged(client):
    res = client.post(
        "/api/predict", params={"run": "tiny"}, json=_b64_body(np.zeros((100, 100), np.uint8))
    ).json()
    assert res["blank"] is True and not _decode(res["image"]).any()


# ----- test images, misclassified, confusion -----


def test_test_image_by_index(client):
    ds = tiny_dataset()
    res = client.get("/api/test-image", params={"run": "tiny", "index": 17}).json()
    assert res["index"] == 17 and res["label"] == int(ds.test_labels[17])
    np.testing.assert_array_equal(_decode(res["image"]).reshape(28, 28), ds.test_images[17])
    assert len(res["layers"]) == 3


def _reference_predictions(runs):
    model = TinyModel.from_run_dir(runs / "tiny")
    ds = tiny_dataset()
    return ds, model.predict_proba(ds.test_images)


def test_misclassified_lists_exactly_the_wrong_ones(client, runs):
    ds, proba = _reference_predictions(runs)
    wrong = np.flatnonzero(proba.argmax(1) != ds.test_labels)
    body = client.get("/api/misclassified", params={"run": "tiny", "limit": 200}).json()
    assert body["total"] == len(wrong) > 0
    assert [item["index"] for item in body["items"]] == wrong.tolist()
    first = body["items"][0]
    assert first["predicted"] == int(proba[wrong[0]].argmax()) != first["label"]
    page = client.get("/api/misclassified", params={"run": "tiny", "offset": 2, "limit": 3}).json()
    assert [item["index"] for item in page["items"]] == wrong[2:5].tolist()


def test_confusion_matrix_and_cell_click(client, runs):
    ds, proba = _reference_predictions(runs)
    pred = proba.argmax(1)
    body = client.get("/api/confusion", params={"run": "tiny"}).json()
    cm = np.array(body["matrix"])
    assert cm.shape == (10, 10) and cm.sum() == len(ds.test_labels) == body["n"]
    t, p = np.unravel_index(cm.argmax(), cm.shape)
    expected = np.flatnonzero((ds.test_labels == t) & (pred == p))
    assert cm[t, p] == len(expected)
    assert body["accuracy"] == pytest.approx(np.mean(pred == ds.test_labels))
    cell = client.get("/api/confusion-cell", params={"run": "tiny", "true": int(t), "pred": int(p)}).json()
    assert cell["total"] == len(expected)
    assert sorted(item["index"] for item in cell["items"]) == expected.tolist()
    conf = [item["confidence"] for item in cell["items"]]
    assert conf == sorted(conf, reverse=True)


# ----- bad input: a 4xx JSON answer, and the server keeps serving -----


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"pixels": [[0.0] * 28] * 27, "drawing": False}, 400, "28x28"),
        ({"pixels": [[0, 1], [2]]}, 400, "rectangle"),
        ({"pixels": []}, 400, "rectangle"),
        ({"pixels": [[0.0] * 2000]}, 400, "at most"),
        ({"pixels": [[300.0]]}, 400, "0..255"),
        ({"pixels": [[-0.5]]}, 400, "0..255"),
        ({"data": "AAAA", "width": 2, "height": 2}, 400, "3 bytes"),
        ({"data": "not base64!", "width": 2, "height": 2}, 400, "base64"),
        ({"data": "AAAA", "width": 0, "height": 3}, 400, "width and height"),
        ({"data": "AAAA", "width": 5000, "height": 5000}, 400, "width and height"),
        ({"data": "AAAA"}, 400, "width"),
        ({}, 400, "either"),
        ({"pixels": [[1]], "data": "AA==", "width": 1, "height": 1}, 400, "either"),
        ({"pixels": "x"}, 422, "pixels"),
        ({"pixels": [["a"]]}, 422, "pixels"),
        ({"pixels": [[1]], "colour": 3}, 422, "colour"),
        ({"pixels": [[1]], "layers": ["nope"]}, 404, "valid layers: conv1, dense1, output"),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_bad_predict_bodies(client, body, status, fragment):
    message = _error(client.post("/api/predict", params={"run": "tiny"}, json=body), status)
    assert fragment in message
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe", b'{"pixels": [[NaN]]}', b'{"pixels": [[Infinity]]}']
)
def test_malformed_json_and_non_finite_numbers(client, raw):
    r = client.post(
        "/api/predict", params={"run": "tiny"}, content=raw, headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_oversized_payloads_are_refused(runs):
    with TestClient(tiny_app(runs, max_body=10_000)) as c:
        big = _b64_body(np.zeros((200, 200), np.uint8))
        assert "larger than" in _error(c.post("/api/predict", params={"run": "tiny"}, json=big), 413)

        def chunks():  # no Content-Length: the limit must still hold while streaming
            for _ in range(20):
                yield b" " * 1000

        r = c.post(
            "/api/predict", params={"run": "tiny"}, content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        small = _b64_body(np.zeros((20, 20), np.uint8))
        assert c.post("/api/predict", params={"run": "tiny"}, json=small).status_code == 200


def test_default_limit_allows_the_page_and_refuses_megabytes(client):
    assert client.post("/api/predict", params={"run": "tiny"}, json=_b64_body(_seven(560))).status_code == 200
    r = client.post("/api/predict", params={"run": "tiny"}, content=b"x" * (3 * 1024 * 1024))
    _error(r, 413)


@pytest.mark.parametrize(
    "name, status",
    [
        ("../tiny", 400),
        ("..", 400),
        ("group/../tiny", 400),
        ("/etc", 400),
        ("/", 400),
        ("\\windows", 400),
        ("C:/x", 400),
        (".hidden", 400),
        ("tiny/", 400),
        ("a" * 300, 400),
        ("nope", 404),
        ("group", 404),
        ("", 400),
    ],
)
def test_unsafe_or_unknown_run_names(client, name, status):
    for method, path, kwargs in (
        ("get", "/api/run", {}),
        ("get", "/api/history", {}),
        ("get", "/api/test-image", {"index": 0}),
        ("get", "/api/misclassified", {}),
        ("get", "/api/confusion", {}),
        ("get", "/api/confusion-cell", {"true": 1, "pred": 2}),
    ):
        r = getattr(client, method)(path, params={"run": name, **kwargs})
        _error(r, status)
    _error(client.post("/api/predict", params={"run": name}, json={"pixels": [[1]]}), status)


def test_missing_run_parameter(client):
    assert "?run=" in _error(client.get("/api/run"), 400)


def test_a_symlink_out_of_the_runs_directory_is_not_reachable(client, runs, tmp_path):
    outside = tmp_path / "outside"
    write_tiny_run(outside / "secret")
    os.symlink(outside / "secret", runs / "link")
    os.symlink(outside, runs / "dirlink")
    assert "outside" in _error(client.get("/api/run", params={"run": "link"}), 400)
    assert "outside" in _error(client.get("/api/run", params={"run": "dirlink/secret"}), 400)
    assert "link" not in [r["name"] for r in client.get("/api/runs").json()["runs"]]


def test_bad_query_values(client):
    assert "out of range" in _error(client.get("/api/test-image", params={"run": "tiny", "index": 60}), 400)
    _error(client.get("/api/test-image", params={"run": "tiny", "index": -1}), 400)
    _error(client.get("/api/test-image", params={"run": "tiny", "index": "x"}), 422)
    _error(client.get("/api/test-image", params={"run": "tiny"}), 422)
    _error(client.get("/api/misclassified", params={"run": "tiny", "limit": 10_000}), 422)
    _error(client.get("/api/misclassified", params={"run": "tiny", "offset": -3}), 422)
    assert "not a class" in _error(
        client.get("/api/confusion-cell", params={"run": "tiny", "true": 10, "pred": 0}), 400
    )
    _error(client.get("/api/confusion-cell", params={"run": "tiny", "true": 1}), 422)


def test_unknown_api_path_is_a_404(client):
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


# ----- the runs directory changing under the server -----


def test_a_rewritten_run_is_reloaded(client, runs):
    img = _b64_body(_seven())
    before = client.post("/api/predict", params={"run": "tiny"}, json=img).json()["probabilities"]
    client.get("/api/confusion", params={"run": "tiny"})
    write_tiny_run(runs / "tiny", seed=7, overwrite=True)
    after = client.post("/api/predict", params={"run": "tiny"}, json=img).json()["probabilities"]
    assert not np.allclose(before, after)
    model = TinyModel.from_run_dir(runs / "tiny")
    from mnistlab.data.drawing import normalize_drawing

    np.testing.assert_allclose(
        after, model.predict_proba(normalize_drawing(_seven())[None])[0], rtol=1e-5, atol=1e-7
    )
    # Results cached per run (the test-split evaluation) are recomputed too.
    ds, proba = _reference_predictions(runs)
    cm = np.array(client.get("/api/confusion", params={"run": "tiny"}).json()["matrix"])
    assert np.trace(cm) == int(np.sum(proba.argmax(1) == ds.test_labels))


def test_new_runs_appear_and_deleted_runs_are_reported(client, runs):
    write_tiny_run(runs / "fresh", seed=3)
    assert "fresh" in [r["name"] for r in client.get("/api/runs").json()["runs"]]
    assert client.get("/api/run", params={"run": "fresh"}).status_code == 200
    shutil.rmtree(runs / "fresh")
    assert "unknown run 'fresh'" in _error(client.get("/api/run", params={"run": "fresh"}), 404)
    assert "fresh" not in [r["name"] for r in client.get("/api/runs").json()["runs"]]


def test_a_corrupted_run_is_reported_and_the_server_recovers(client, runs):
    img = _b64_body(_seven())
    assert client.post("/api/predict", params={"run": "tiny"}, json=img).status_code == 200
    weights = runs / "tiny" / "weights.npz"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a half-written file
    assert "cannot be loaded" in _error(client.post("/api/predict", params={"run": "tiny"}, json=img), 409)
    assert client.get("/api/run", params={"run": "group/other"}).status_code == 200
    weights.write_bytes(good)
    assert client.post("/api/predict", params={"run": "tiny"}, json=img).status_code == 200


def test_a_broken_manifest_is_listed_with_its_error(client, runs):
    (runs / "tiny" / "run.json").write_text("{ broken")
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert "corrupt manifest" in listed["tiny"]["error"]
    assert "cannot be loaded" in _error(client.get("/api/run", params={"run": "tiny"}), 409)
    (runs / "tiny" / "run.json").write_text(json.dumps({"format": 99, "kind": "mlp"}))
    assert "not supported" in _error(client.get("/api/run", params={"run": "tiny"}), 409)


def test_a_model_that_fails_to_load_is_a_409(runs):
    def broken_loader(path):
        raise KeyError("w1")

    from mnistlab.web.app import create_app

    with TestClient(create_app(runs, model_loader=broken_loader, dataset_loader=tiny_dataset)) as c:
        assert "KeyError" in _error(c.get("/api/run", params={"run": "tiny"}), 409)


def test_an_unavailable_dataset_is_a_503(runs):
    from mnistlab.errors import DataError
    from mnistlab.web.app import create_app

    def offline(name):
        raise DataError("no network and no cache; run `mnistlab data fetch` once online")

    with TestClient(create_app(runs, model_loader=TinyModel.from_run_dir, dataset_loader=offline)) as c:
        assert "data fetch" in _error(c.get("/api/test-image", params={"run": "tiny", "index": 0}), 503)
        # Drawing needs no dataset and still works.
        assert c.post("/api/predict", params={"run": "tiny"}, json=_b64_body(_seven())).status_code == 200


def test_concurrent_updates_each_get_their_own_answer(client, runs):
    """Many draw updates at once (several tabs): every answer belongs to its own image."""
    from concurrent.futures import ThreadPoolExecutor

    from mnistlab.data.drawing import normalize_drawing

    model = TinyModel.from_run_dir(runs / "tiny")
    rng = np.random.default_rng(0)
    images = [(rng.random((60, 60)) > 0.7).astype(np.uint8) * 255 for _ in range(16)]

    def post(img):
        return client.post("/api/predict", params={"run": "tiny"}, json=_b64_body(img)).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, images))
    for img, answer in zip(images, answers):
        expected = model.predict_proba(normalize_drawing(img)[None])[0]
        np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5, atol=1e-7)


def test_compare_and_oip_say_when_the_inspect_library_is_missing(client, monkeypatch):
    import mnistlab.inspect as inspect_lib

    monkeypatch.delattr(inspect_lib, "compare_classes", raising=False)
    r = client.get("/api/compare", params={"run": "tiny", "a": 1, "b": 2})
    assert r.status_code == 501 and "inspect" in r.json()["error"]


def test_api_docs_page_lists_every_endpoint_without_fetching_anything(client):
    answer = client.get("/api/docs")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    # the page promises to work offline: no script, style or icon from a CDN
    assert "http://" not in page and "https://" not in page and "<script" not in page
    schema = client.get("/api/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}</h2>" in page
    assert "<code>?steps=</code>" in page and "integer 1..500" in page  # GET /api/oip's query
    assert "<code>drawing</code>" in page and "an exact 28x28 image" in page  # POST /api/predict's body
    assert "<code>pixels</code> as rows of numbers" in page  # docstrings' ``literals``


def test_unknown_endpoints_and_methods_answer_in_the_api_error_shape(client):
    missing = client.get("/api/predictions?run=tiny")
    assert missing.status_code == 404
    assert missing.json() == {"error": "nothing at GET /api/predictions; the API is listed at /api/docs"}
    wrong_method = client.get("/api/predict?run=tiny")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {
        "error": "GET is not allowed on /api/predict (allowed: POST); see /api/docs"
    }
