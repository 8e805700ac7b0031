"""The Sweeps tab: its endpoints over a real study, and in Chromium a chart point that opens a trial's run."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.data import Dataset
from mnistlab.mlp.config import MLPConfig
from mnistlab.sweep import Sweep, open_storage, parse_space, run_worker, without_test_split
from mnistlab.sweep.engines import MLPEngine
from test_web_browser import _serve, browser  # noqa: F401  (browser: the module's Chromium fixture)
from test_web_helpers import tiny_dataset

pytest.importorskip("fastapi")


def learnable(n: int = 600) -> Dataset:
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for k in range(10):
        images[labels == k, 2 * k + 4 : 2 * k + 7, 4:24] = 220
    return Dataset("mnist", images, labels, images[:0], labels[:0], tuple("0123456789"))


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """A runs directory holding a finished 3-trial study 'web' (tiny MLPs, a few seconds)."""
    root = tmp_path_factory.mktemp("sweep-runs")
    engine, base = MLPEngine(), MLPConfig(hidden=(8,), epochs=2, batch_size=50, val=100)
    params = engine.params(base)
    space = parse_space("lr=log:0.01:1 activation=choice:relu,tanh", params)
    sweep = Sweep(
        "web", engine, space, params, base, without_test_split(learnable()), root, 3, prune=False, threads=1
    )
    run_worker(sweep, open_storage(f"sqlite:///{root}/sweeps.db", heartbeat=1))
    return root


def test_the_sweep_endpoints_list_studies_and_trials_with_their_runs(sweep_runs, tmp_path):
    from fastapi.testclient import TestClient

    from mnistlab.web.app import create_app

    client = TestClient(create_app(sweep_runs, dataset_loader=tiny_dataset))
    studies = client.get("/api/sweeps").json()
    assert [s["name"] for s in studies["studies"]] == ["web"] and studies["studies"][0]["counts"] == {
        "complete": 3
    }
    data = client.get("/api/sweep", params={"study": "web"}).json()
    values = [r["val_accuracy"] for r in data["rows"]]
    assert values == sorted(values, reverse=True) and data["engine"] == "mlp" and data["wanted"] == 3
    for row in data["rows"]:
        assert row["run"] == f"sweeps/web/trial-{row['trial']:04d}"
        assert client.get("/api/run", params={"run": row["run"]}).status_code == 200  # opens like any run
    missing = client.get("/api/sweep", params={"study": "nope"})
    assert missing.status_code == 400 and "no study named 'nope'" in missing.json()["error"]
    empty = TestClient(create_app(tmp_path, dataset_loader=tiny_dataset))
    assert empty.get("/api/sweeps").json() == {"storage": None, "studies": []}
    assert not (tmp_path / "sweeps.db").exists()  # looking does not create a database


@pytest.fixture(scope="module")
def sweep_server(sweep_runs):
    pytest.importorskip("uvicorn")
    from mnistlab.web.app import create_app

    yield from _serve(create_app(sweep_runs, dataset_loader=tiny_dataset))


@pytest.mark.browser
def test_a_point_of_the_sweep_chart_opens_the_trial_run(sweep_server, browser):  # noqa: F811
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(sweep_server + "/")
    page.click("button[data-tab=sweeps]")
    page.wait_for_selector("#sweep-table tr[data-trial]")
    assert page.locator("#sweep-table tr[data-trial]").count() == 3
    assert "3 of 3 trials finished" in page.inner_text("#sweep-about")
    point = page.locator("circle.sweep-point[data-trial='2']")
    run = point.get_attribute("data-run")
    assert run == "sweeps/web/trial-0002"
    point.click()
    page.wait_for_selector("#tab-training.active #curves svg")
    assert page.eval_on_selector("#run-select", "s => s.value") == run
    assert "MLP" in page.inner_text("#run-info") and not errors
    page.close()
