"""Server time of one web update with an attribution map, per method, beside the plain update.

What the page costs the server when a user draws with a map shown: /api/predict with
``attribution=METHOD`` (decode, normalize, probabilities and every layer's activations, then the
map and its encoding), measured through the real app (FastAPI's TestClient), on CPU, with torch at
one thread as `mnistlab serve` runs it. Target for the gradient methods (gradient, gradient x input,
SmoothGrad, Grad-CAM): median < 100 ms per update. Integrated gradients (50 path points) and
occlusion (169 windows) run many more passes and are allowed to take longer; the table says how long.

    python benchmarks/bench_attribution.py                     # an untrained seed CNN (no training needed)
    python benchmarks/bench_attribution.py --run runs/mlp      # any run, MLP or CNN
    python benchmarks/bench_attribution.py --run RUN --sanity 20 --completeness 100
        # also the sanity check: Spearman of each method's maps over the first 20 test images
        # against the maps after cascading randomization, and integrated gradients' completeness
        # errors over the first 100 (both need a trained run and its dataset; --repeats 0 skips timing)
"""

from __future__ import annotations

import base64
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import cpu_class  # noqa: E402
from bench_web import PAD, drawings, seed_cnn_run, served_parser  # noqa: E402


def time_updates(run_dir: Path, repeats: int, threads: int) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient

    from mnistlab.inspect.attribution import LIVE_METHODS, METHODS
    from mnistlab.web.app import create_app

    client = TestClient(create_app(run_dir.parent, torch_threads=threads))
    name = run_dir.name
    bodies = [{"data": base64.b64encode(p.tobytes()).decode(), "width": PAD, "height": PAD, "drawing": True}
              for p in drawings(16)]
    contenders = [None, *METHODS]
    times: dict[str | None, list[float]] = {m: [] for m in contenders}
    own: dict[str | None, list[float]] = {m: [] for m in contenders}
    for method in contenders:  # warm-up: model load, first-call allocations
        for body in bodies[:3]:
            r = client.post(
                "/api/predict", params={"run": name},
                json={**body, **({"attribution": method} if method else {})},
            )
            assert r.status_code == 200, r.text
            assert "error" not in r.json().get("attribution", {}), r.json()["attribution"]
    # Interleaved, so each method sees the same drift of a busy machine.
    for i in range(repeats):
        for method in contenders:
            body = {**bodies[i % len(bodies)], **({"attribution": method} if method else {})}
            answer = client.post("/api/predict", params={"run": name}, json=body).json()
            times[method].append(answer["server_ms"])
            if method:
                own[method].append(answer["attribution"]["ms"])
    kind = client.get("/api/run", params={"run": name}).json()["kind"]
    print(f"run: {run_dir} ({kind}); {repeats} updates per method, interleaved; torch threads {threads}")
    print(cpu_class.header("native"))
    base = statistics.median(times[None])
    print(f"{'update with':<18} {'median ms':>10} {'p90 ms':>8} {'map alone':>10} {'x plain':>8}  target")
    for method in contenders:
        med = statistics.median(times[method])
        alone = f"{statistics.median(own[method]):10.2f}" if method else f"{'':>10}"
        if method is None:
            verdict = ""
        elif method in LIVE_METHODS:
            verdict = "< 100 ms: " + ("meets" if med < 100 else "MISSES")
        else:
            verdict = "(many passes: may exceed 100 ms)"
        print(f"{method or 'no map (plain)':<18} {med:10.2f} {np.percentile(times[method], 90):8.2f} {alone} "
              f"{med / base:8.2f}  {verdict}")


def sanity_table(run_dir: Path, n_images: int, seed: int) -> None:
    from mnistlab.inspect import load_run
    from mnistlab.inspect.attribution import METHODS, map_layers
    from mnistlab.inspect.sanity import cascading_randomization

    model, dataset, _ = load_run(run_dir)
    images = dataset.test_images[:n_images]
    print(
        f"\nsanity check: {run_dir} ({model.kind}), test images 0..{n_images - 1}, predicted class, seed "
        f"{seed}"
    )
    print(
        "mean Spearman rank correlation with the trained model's map, |map| / signed, after randomizing "
        "down to:"
    )
    layers = list(reversed(model.layers_with_weights()))
    print(f"{'method':<18}" + "".join(f"{layer:>16}" for layer in layers))
    for method in METHODS:
        if method == "gradcam" and not map_layers(model):
            continue
        t0 = time.perf_counter()
        result = cascading_randomization(model, images, None, method, seed=seed)
        cells = [f"{row['spearman |map|']:7.2f} /{row['spearman signed']:6.2f}" for row in result.table()]
        print(f"{method:<18}" + "".join(f"{c:>16}" for c in cells) + f"   ({time.perf_counter() - t0:.0f} s)")


def completeness_table(run_dir: Path, n_images: int) -> None:
    from mnistlab.inspect import load_run
    from mnistlab.inspect.attribution import attribute

    model, dataset, _ = load_run(run_dir)
    images = dataset.test_images[:n_images]
    print(
        f"\nintegrated gradients, completeness: {run_dir} ({model.kind}), test images 0..{n_images - 1}, "
        "black baseline"
    )
    print(
        f"{'target':<10} {'steps':>6} {'median |error|':>15} {'max |error|':>12} {'median rel.':>12} "
        f"{'max rel.':>10}"
    )
    for target in (None, "4,9"):
        for steps in (16, 50, 128):
            result = attribute(model, images, target, "ig", steps=steps)
            error, rel = np.abs(result.completeness_error), result.relative_completeness_error()
            print(f"{target or 'predicted':<10} {steps:>6} {np.median(error):15.2e} {error.max():12.2e} "
                  f"{np.median(rel):12.2%} {rel.max():10.2%}")


def main(argv: list[str] | None = None) -> int:
    parser = served_parser(__doc__, 40, "updates per method")
    parser.add_argument(
        "--sanity", type=int, metavar="N", help="also the sanity table over the first N test images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights for --sanity")
    parser.add_argument(
        "--completeness", type=int, metavar="N",
        help="also IG's completeness errors over the first N test images",
    )
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    run_dir = args.run if args.run else seed_cnn_run(Path(tmp.name))
    if args.repeats > 0:
        time_updates(run_dir, args.repeats, args.threads)
    if args.sanity:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(args.threads)
        sanity_table(run_dir, args.sanity, args.seed)
    if args.completeness:
        completeness_table(run_dir, args.completeness)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
