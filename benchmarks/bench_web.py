"""Server time per draw update on the web page: probabilities plus every layer's activations.

What one update costs the server when a user draws: the page POSTs its 280x280 pad as base64
to /api/predict; the server decodes it, normalizes it the MNIST way, runs one forward pass with
hooks on every layer, and encodes all activations. Measured through the real app (FastAPI's
TestClient: everything but the socket), on CPU, for the seed CNN (conv 32-64-64, dense 70;
96,844 parameters). Target: median < 100 ms.

    python benchmarks/bench_web.py                 # an untrained seed CNN (latency does not need training)
    python benchmarks/bench_web.py --run runs/cnn  # any run directory, MLP or CNN

Reports the median and 90th percentile of the whole request (as the client sees it, minus the
network) and of the handler's own time, and the median of each step, over drawings of MNIST-like
digits at the pad's size.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

PAD = 280  # the page's drawing pad, in pixels


def seed_cnn_run(directory: Path) -> Path:
    """A run directory holding an untrained seed CNN (standardization fitted on random digits)."""
    from mnistlab.cnn.model import build_net, state_to_numpy
    from mnistlab.data import Preprocessor
    from mnistlab.runs import make_manifest, write_run

    net = build_net("seed", seed=0)
    pre = Preprocessor.fit(
        "standard", np.random.default_rng(0).integers(0, 256, (256, 28, 28)).astype(np.uint8)
    )
    manifest = make_manifest("cnn", {"spec": "seed"}, dataset="mnist", note="untrained, for bench_web")
    return write_run(directory / "seed-cnn", manifest, state_to_numpy(net), pre.to_arrays(), [])


def drawings(n: int, seed: int = 0) -> list[np.ndarray]:
    """Pad-sized drawings: strokes of random digits-like polylines, 20 px wide like the page's pen."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:PAD, 0:PAD]
    out = []
    for _ in range(n):
        img = np.zeros((PAD, PAD), np.float32)
        points = rng.uniform(50, 230, (rng.integers(3, 7), 2))
        for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
            for t in np.linspace(0, 1, 24):
                y, x = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
                img[(yy - y) ** 2 + (xx - x) ** 2 <= 100] = 255
        out.append(img.astype(np.uint8))
    return out


def served_parser(description: str, repeats: int, repeats_help: str) -> argparse.ArgumentParser:
    """The options of the benchmarks of the server (this one and bench_attribution.py): --run,
    --repeats, --threads; and the server's OpenMP wait policy, set before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `mnistlab serve` does
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: an untrained seed CNN)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"{repeats_help} (default {repeats})")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, as `mnistlab serve --threads` (default 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = served_parser(__doc__, 300, "updates to time").parse_args(argv)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient

    from mnistlab.data.drawing import normalize_drawing
    from mnistlab.models import load_model
    from mnistlab.web import encode
    from mnistlab.web.app import create_app


    tmp = tempfile.TemporaryDirectory()
    run_dir = args.run if args.run else seed_cnn_run(Path(tmp.name))
    runs_dir, name = run_dir.parent, run_dir.name
    client = TestClient(create_app(runs_dir, torch_threads=args.threads))
    pads = drawings(32)
    bodies = [
        {"data": base64.b64encode(p.tobytes()).decode(), "width": PAD, "height": PAD, "drawing": True}
        for p in pads
    ]

    info = client.get("/api/run", params={"run": name}).json()
    if "error" in info:
        print(f"bench_web: {info['error']}", file=sys.stderr)
        return 1
    layers = info["layers"]
    for body in bodies[:10]:  # warm-up: model load, first-call allocations
        assert client.post("/api/predict", params={"run": name}, json=body).status_code == 200

    total, handler = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        r = client.post("/api/predict", params={"run": name}, json=bodies[i % len(bodies)])
        total.append((time.perf_counter() - t0) * 1000)
        handler.append(r.json()["server_ms"])

    # Over a real socket: uvicorn on 127.0.0.1 and an HTTP client, as the page talks to it.
    socket_ms = _over_socket(create_app(runs_dir, torch_threads=args.threads), name, bodies, args.repeats)

    # The same steps called directly, to show where the time goes. torch's thread count is per
    # calling thread (OpenMP), so set it here too, as the server does on its model thread.
    model = load_model(run_dir)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(args.threads)
    names = model.layer_names()
    steps: dict[str, list[float]] = {
        "normalize drawing": [], "forward, all layers": [], "encode activations": [],
    }
    for i in range(args.repeats):
        pad = pads[i % len(pads)]
        t0 = time.perf_counter()
        image = normalize_drawing(pad)
        t1 = time.perf_counter()
        acts = model.activations(image[None], names)
        t2 = time.perf_counter()
        [encode.activation(k, v[0]) for k, v in acts.items()]
        t3 = time.perf_counter()
        steps["normalize drawing"].append((t1 - t0) * 1000)
        steps["forward, all layers"].append((t2 - t1) * 1000)
        steps["encode activations"].append((t3 - t2) * 1000)

    def q(values: list[float], p: float) -> float:
        return float(np.percentile(values, p))

    size = len(r.content)
    threads = (
        f"torch threads {args.threads} (as `mnistlab serve --threads {args.threads}`), "
        if "torch" in sys.modules
        else ""
    )
    print(f"run: {run_dir} ({info['kind']}, layers: {', '.join(l['name'] for l in layers)})")
    print(f"{threads}OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{args.repeats} draw updates of a {PAD}x{PAD} pad; answer {size / 1024:.0f} KiB of JSON")
    print(
        f"request (TestClient, all but the socket): median {statistics.median(total):6.2f} ms   p90 "
        f"{q(total, 90):6.2f} ms"
    )
    print(
        f"handler (server_ms):                      median {statistics.median(handler):6.2f} ms   p90 "
        f"{q(handler, 90):6.2f} ms"
    )
    print(
        f"over a socket (uvicorn + httpx):          median {statistics.median(socket_ms):6.2f} ms   p90 "
        f"{q(socket_ms, 90):6.2f} ms"
    )
    for step, values in steps.items():
        print(f"  {step:<22} median {statistics.median(values):6.2f} ms")
    target = 100.0
    verdict = "meets" if max(statistics.median(total), statistics.median(socket_ms)) < target else "MISSES"
    print(f"target: median < {target:.0f} ms per update -> {verdict} the target")
    tmp.cleanup()
    return 0


def _over_socket(app, name: str, bodies: list[dict], repeats: int) -> list[float]:
    import threading

    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/predict"
    times = []
    try:
        with httpx.Client(timeout=30) as http:
            for body in bodies[:10]:
                http.post(url, params={"run": name}, json=body).raise_for_status()
            for i in range(repeats):
                t0 = time.perf_counter()
                http.post(url, params={"run": name}, json=bodies[i % len(bodies)]).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
