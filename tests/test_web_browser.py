"""End to end in a real browser: Playwright drives Debian's Chromium against a live server.

The page loads, a stroke drawn with the mouse on the canvas brings probabilities and every layer's
activation images, the confusion matrix answers a click, and a screenshot is saved (to
$MNISTLAB_SCREENSHOT_DIR when set, else the test's tmp directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    """Debian's Chromium, installed by scripts/system-deps.sh (as root, with apt-get) when missing."""
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "system-deps.sh"), "--browser"], check=False, timeout=900
        )
    if not os.access(CHROMIUM, os.X_OK):
        why = "not root" if os.geteuid() != 0 else "apt-get could not install it"
        pytest.skip(
            f"{CHROMIUM} is missing and could not be installed ({why}); run: sudo apt-get install chromium"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("uvicorn")
    from test_web_helpers import tiny_app, write_tiny_run

    root = tmp_path_factory.mktemp("browser-runs")
    write_tiny_run(root / "tiny")
    write_tiny_run(root / "second", seed=5)
    yield from _serve(tiny_app(root))


def _serve(app):
    """Serve ``app`` on a free local port in a thread; yields its URL, then stops it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _canvas_ink(page, selector: str) -> int:
    """How many pixels of a canvas differ from its first pixel, colour or opacity (0 means nothing was
    painted)."""
    return page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                  for (let i = 0; i < d.length; i += 4)
                    if (d[i] !== d[0] || d[i+1] !== d[1] || d[i+2] !== d[2] || d[i+3] !== d[3]) n++;
                  return n; }""",
    )


def _draw(page, points):
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=10)
    page.mouse.up()


def test_draw_a_digit_and_see_every_layer(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors, foreign = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith((server, "data:")) else None)

    page.goto(server + "/")
    page.wait_for_selector("#layer-conv1")
    page.wait_for_function("document.getElementById('source').textContent.includes('test image #0')")
    assert page.locator("#run-select option").count() == 2

    _draw(page, [(70, 60), (210, 60), (180, 120), (150, 180), (125, 240)])
    page.wait_for_function("document.getElementById('source').textContent.includes('your drawing')")
    page.wait_for_timeout(300)  # let the last debounced update land

    widths = [page.eval_on_selector(f"#bar-{k}", "e => parseFloat(e.style.width)") for k in range(10)]
    assert abs(sum(widths) - 100) < 1.0 and max(widths) > 0
    predicted = page.evaluate("document.body.dataset.predicted")
    assert predicted in [str(k) for k in range(10)]
    assert page.inner_text("#verdict") == predicted
    assert _canvas_ink(page, "#sees") > 20  # the 28x28 image the model sees
    for layer in ("conv1", "dense1", "output"):
        assert _canvas_ink(page, f"#layer-{layer}") > 0, layer
    page.screenshot(path=str(tmp_path / "draw.png"), full_page=True)

    page.click("#btn-undo")
    page.wait_for_function("document.getElementById('source').textContent.includes('blank pad')")

    page.click("button[data-tab=confusion]")
    page.wait_for_selector("table.confusion td[data-true='3'][data-pred='3']")
    page.click("table.confusion td[data-true='0'][data-pred='0']")
    page.wait_for_function(
        "document.getElementById('cell-title').textContent.startsWith('True 0, predicted 0')"
    )

    page.click("button[data-tab=training]")
    page.wait_for_selector("#curves svg polyline")

    page.click("button[data-tab=misclassified]")
    page.wait_for_selector("#mis-gallery .thumb")
    page.locator("#mis-gallery .thumb").first.click()
    page.wait_for_function("document.getElementById('source').textContent.includes('test image #')")

    import mnistlab.inspect as inspect_lib

    if hasattr(inspect_lib, "compare_classes"):  # the inspect library's figures, once it is in this tree
        page.click("button[data-tab=compare]")
        page.click("#cmp-go")
        page.wait_for_selector("#cmp-out .figure img", timeout=60_000)
        page.wait_for_selector("#cmp-out table.units")

    page.select_option("#run-select", "second")
    page.wait_for_function("location.search.includes('run=second')")

    shots = os.environ.get("MNISTLAB_SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "draw.png", Path(shots) / "web-draw.png")
    assert (tmp_path / "draw.png").stat().st_size > 10_000
    assert not errors, errors
    assert not foreign, foreign
    page.close()


def test_a_slow_first_test_image_does_not_wipe_a_drawing_begun_meanwhile(server, browser):
    # The first test image is asked for as the run loads; a user may start drawing before it arrives.
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    held = []
    page.route("**/api/test-image*", lambda route: held.append(route))
    page.goto(server + "/?run=tiny")
    page.wait_for_selector("#layer-conv1")
    for _ in range(200):  # the run's first test image is on its way, and held
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    _draw(page, [(70, 60), (210, 60), (180, 120), (150, 180), (125, 240)])
    page.wait_for_function("document.getElementById('source').textContent.includes('your drawing')")
    with page.expect_response("**/api/test-image*"):
        held[0].continue_()
    page.wait_for_timeout(300)
    assert "your drawing" in page.inner_text("#source")
    assert _canvas_ink(page, "#pad") > 0
    page.close()


def test_an_error_from_the_server_is_shown_not_thrown(server, browser):
    page = browser.new_page()
    page.goto(server + "/?run=tiny")
    page.wait_for_selector("#layer-conv1")
    page.fill("#test-index", "999999")
    page.click("#btn-load")
    page.wait_for_selector("#error:not([hidden])")
    assert "out of range" in page.inner_text("#error")
    page.close()


@pytest.fixture(scope="module")
def mlp_server(tmp_path_factory):
    """Real MLP runs on the tiny dataset: one trained now, and a copy in the old history format."""
    pytest.importorskip("uvicorn")
    import json

    from mnistlab.mlp import MLPConfig, train_on_dataset
    from mnistlab.web.app import create_app
    from test_web_helpers import tiny_dataset

    root = tmp_path_factory.mktemp("browser-mlp-runs")
    config = MLPConfig(hidden=(8,), epochs=3, batch_size=20, lr=0.1, preprocess="unit")
    train_on_dataset(config, tiny_dataset(), out=root / "mlp", threads=1)
    shutil.copytree(root / "mlp", root / "old-mlp")
    history = json.loads((root / "mlp" / "history.json").read_text())
    renamed = {"loss": "cost", "reg_loss": "reg_cost"}  # what mnistlab wrote before one vocabulary
    old = [{renamed.get(k, k): v for k, v in row.items()} for row in history]
    (root / "old-mlp" / "history.json").write_text(json.dumps(old))
    yield from _serve(create_app(root, dataset_loader=tiny_dataset))


@pytest.mark.parametrize("run", ["mlp", "old-mlp"])
def test_training_tab_draws_the_mlp_loss_curve(mlp_server, browser, run):
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{mlp_server}/?run={run}")
    page.wait_for_selector("#layer-output")
    page.click("button[data-tab=training]")
    page.wait_for_selector("#curves svg polyline")
    titles = page.eval_on_selector_all(
        "#curves svg", "svgs => svgs.map(s => s.querySelector('text').textContent)"
    )
    assert "Loss" in titles, titles
    loss_chart = page.locator("#curves > div").nth(titles.index("Loss"))
    assert loss_chart.locator("polyline").count() >= 1
    points = loss_chart.locator("polyline").first.get_attribute("points").split()
    assert len(points) == 3  # one point per epoch
    assert "loss" in loss_chart.locator(".legend").inner_text().split()
    assert not errors, errors
    page.close()
