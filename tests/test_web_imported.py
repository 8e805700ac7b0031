"""An imported Keras model on the web page and in the report, like a trained run (real Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistlab.importers import import_model

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
pytest.importorskip("h5py")
pytest.importorskip("torch")
from test_web_browser import browser  # noqa: F401 - the shared Chromium fixture


def _imported_runs(root: Path) -> Path:
    # every layer kind the importer maps (stride-2 same, dilation, BN, average and max pooling, ...)
    import_model("keras", FIXTURES / "strided_same.keras", root / "keras-strided")
    import_model("keras", FIXTURES / "seed_tf_keras.h5", root / "keras-seed")
    return root


def _app(root: Path):
    from mnistlab.web.app import create_app
    from test_web_helpers import tiny_dataset

    return create_app(root, dataset_loader=tiny_dataset)  # the real model loader: load_model


def test_api_names_the_original_layers_and_the_file(tmp_path):
    from fastapi.testclient import TestClient

    client = TestClient(_app(_imported_runs(tmp_path)))
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert listed["keras-seed"]["imported"] == "seed_tf_keras.h5"
    info = client.get("/api/run", params={"run": "keras-seed"}).json()
    assert info["imported"] == {"format": "keras", "file": "seed_tf_keras.h5"}
    assert info["history"] == []
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert (
        layers["conv2"]["source"] == "conv2d_1 (Conv2D)" and layers["output"]["source"] == "dense_1 (Dense)"
    )
    answer = client.post(
        "/api/predict",
        params={"run": "keras-strided"},
        json={"pixels": [[255.0 if 10 < c < 18 else 0.0 for c in range(28)]] * 28},
    ).json()
    shown = client.get("/api/run", params={"run": "keras-strided"}).json()["layers"]
    assert [layer["name"] for layer in answer["layers"]] == [layer["name"] for layer in shown]
    assert abs(sum(answer["probabilities"]) - 1) < 1e-5


@pytest.mark.slow
def test_report_of_an_imported_model_says_where_it_came_from(tmp_path):
    from mnistlab.inspect import build_report, load_run
    from test_web_helpers import tiny_dataset

    run = import_model("keras", FIXTURES / "seed_tf_keras.h5", tmp_path / "run")
    model, _, manifest = load_run(run, dataset=tiny_dataset())
    html = build_report(
        model,
        tiny_dataset(),
        manifest,
        [],
        pair=(1, 7),
        n_compare=2,
        n_ambiguous=2,
        oip_steps=2,
        oip_max_units=2,
    )
    assert "seed_tf_keras.h5 (keras)" in html and "conv2d_1 (Conv2D)" in html
    assert "No training history: this model was imported from seed_tf_keras.h5" in html


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("uvicorn")
    from test_web_browser import _serve

    yield from _serve(_app(_imported_runs(tmp_path_factory.mktemp("imported-runs"))))


@pytest.mark.browser
def test_draw_a_digit_on_an_imported_keras_model_and_see_every_layer(server, request, tmp_path):
    from test_web_browser import _canvas_ink, _draw

    chromium = request.getfixturevalue("browser")
    page = chromium.new_page(viewport={"width": 1360, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/?run=keras-strided")
    page.wait_for_selector("#layer-conv1")
    assert "imported from strided_same.keras" in page.inner_text("#run-info")
    _draw(page, [(70, 60), (210, 60), (180, 120), (150, 180), (125, 240)])
    page.wait_for_function("document.getElementById('source').textContent.includes('your drawing')")
    page.wait_for_timeout(500)
    names = page.eval_on_selector_all("#layers canvas", "cs => cs.map(c => c.dataset.layer)")
    assert names == ["conv1", "conv2", "conv3", "avgpool1", "conv4", "pool1", "flatten", "dense1", "output"]
    for name in names:
        assert _canvas_ink(page, f"#layer-{name}") > 0 or name in ("pool1", "flatten"), name
    sources = page.eval_on_selector_all("#layers .source", "ds => ds.map(d => d.textContent)")
    assert sources[0].startswith("conv_s2_same (Conv2D), bn_a (BatchNormalization)")
    page.click("button[data-tab=training]")
    page.wait_for_function("document.getElementById('curves').textContent.includes('imported from')")
    assert not page.locator("#curves svg").count()
    page.screenshot(path=str(tmp_path / "imported.png"), full_page=True)
    page.close()
    assert not errors, errors
