"""The screenshots in docs/tensorboard.md: TensorBoard over a --tensorboard DIR, in Debian's Chromium.

    mnistlab train mlp --epochs 10 --out runs/mlp-default --tensorboard tb
    mnistlab train cnn --epochs 3 --out runs/cnn-seed --tensorboard tb
    python scripts/tensorboard_screenshot.py tb docs/
"""

import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

VIEWS = {
    "scalars": "history/(loss|test_accuracy|train_accuracy|lr)",
    "grids": "activation_grid|oip|confusion",
}


def main(logdir: str, outdir: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "tensorboard", logdir, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for name, tags in VIEWS.items():
                page.goto(f"http://127.0.0.1:{port}/#timeseries", wait_until="networkidle")
                box = page.locator('input[placeholder*="Filter tags"]').first
                box.wait_for(timeout=60000)
                box.fill(tags)
                box.press("Escape")
                smoothing = page.locator("input[type=number]").first
                if smoothing.count():
                    smoothing.fill("0")
                    smoothing.press("Enter")
                if name == "scalars":  # the settings panel starts open; folding it sticks for the next view
                    page.get_by_text("Settings", exact=True).first.click()
                time.sleep(5)
                page.screenshot(path=f"{outdir}/tensorboard-{name}.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
