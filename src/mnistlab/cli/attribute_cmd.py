"""`mnistlab attribute`: which pixels of a test image made the model say what it said.

Writes one figure (image, map, overlay, class probabilities, the map of every class, and with
--sanity the cascading-randomization row) and prints the numbers on stdout. The analysis lives in
mnistlab.inspect.attribution and mnistlab.inspect.sanity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_options, info, save_figure


def register(sub: argparse._SubParsersAction) -> None:
    from ..inspect.attribution import METHODS

    p = sub.add_parser(
        "attribute", help="attribution map of a test image: gradient, ig, smoothgrad, occlusion, gradcam"
    )
    add_run_options(p)
    p.add_argument("--index", type=int, default=1302, help="image index in the split (default 1302)")
    p.add_argument(
        "--method", default="gradient", choices=list(METHODS), help="attribution method (default gradient)"
    )
    p.add_argument("--target", help="class (4) or pair (4,9: p(4) - p(9)); default: the predicted class")
    p.add_argument("--steps", type=int, help="ig: quadrature points on the path (default 50)")
    p.add_argument("--baseline", type=float, help="ig, occlusion: baseline pixel level (default 0, black)")
    p.add_argument("--samples", type=int, help="smoothgrad: noisy copies (default 16)")
    p.add_argument(
        "--noise", type=float, help="smoothgrad: noise std in pixel levels (default 38.25, 15%% of 255)"
    )
    p.add_argument("--window", type=int, help="occlusion: square side in pixels (default 4)")
    p.add_argument("--stride", type=int, help="occlusion: step in pixels (default 2)")
    p.add_argument("--layer", help="gradcam: map layer (default: the last conv layer)")
    p.add_argument("--seed", type=int, help="smoothgrad noise and --sanity's random weights (default 0)")
    p.add_argument(
        "--sanity", action="store_true",
        help="cascading randomization from the top layer, Spearman against the trained map",
    )
    p.add_argument(
        "--out", metavar="PNG", help="figure file (default RUN/figures/attribution-METHOD-INDEX.png)"
    )
    p.set_defaults(func=cmd_attribute)


def method_options_from_args(args: argparse.Namespace) -> dict:
    from ..inspect.attribution import METHODS

    given = {"steps": args.steps, "baseline": args.baseline, "samples": args.samples, "noise": args.noise,
             "window": args.window, "stride": args.stride, "layer": args.layer, "seed": args.seed}
    return {k: v for k, v in given.items() if v is not None and k in METHODS[args.method]}


def cmd_attribute(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import ConfigError
    from ..inspect import load_run
    from ..inspect.attribution import attribute, attribute_each_class
    from ..inspect.sanity import cascading_randomization
    from ..viz.attribution import plot_attribution

    model, dataset, _ = load_run(args.run, args.dataset, data_dir=args.data_dir)
    images, labels = dataset.split(args.split)
    if not 0 <= args.index < len(images):
        raise ConfigError(
            f"--index {args.index} is out of range; the {args.split} split has {len(images)} images "
            f"(0..{len(images) - 1})"
        )
    image = images[args.index]
    options = method_options_from_args(args)
    result = attribute(model, image, args.target, args.method, **options)
    proba = model.predict_proba(image[None])[0]
    names = [str(c) for c in dataset.class_names]
    each = attribute_each_class(model, image, args.method, **options)
    sanity = None
    if args.sanity:
        sanity = cascading_randomization(
            model, image, args.target, args.method, seed=args.seed or 0, **options
        )
    print(
        f"{args.split} image {args.index}: label {names[int(labels[args.index])]}, predicted "
        f"{names[int(proba.argmax())]} "
        f"({proba.max():.1%}); {result.method} of {result.target.describe(0, names)} = "
        f"{result.objective[0]:.4g} "
        f"in {result.seconds * 1000:.0f} ms"
    )
    if result.completeness_error is not None:
        gap = result.objective[0] - result.baseline_objective[0]
        print(
            f"completeness: sum of map {float(result.maps[0].sum(dtype=np.float64)):.6g}, f(x) - "
            f"f(baseline) {gap:.6g}, "
            f"error {float(result.completeness_error[0]):.3g} "
            f"({float(result.relative_completeness_error()[0]):.2%})"
        )
    if sanity is not None:
        print("cascading randomization (Spearman rank correlation with the trained model's map):")
        print(f"  {'randomized down to':<20} {'|map|':>8} {'signed':>8}")
        for row in sanity.table():
            cells = [
                f"{row[k]:>8.3f}" if row[k] == row[k] else f"{'constant':>8}"
                for k in ("spearman |map|", "spearman signed")
            ]
            print(f"  {row['randomized down to']:<20} {' '.join(cells)}")
        if any(row["undefined"] for row in sanity.table()):
            print(
                "  constant: the randomized model's map is the same everywhere (no rank order), e.g. a "
                "silent layer"
            )
    fig = plot_attribution(
        result, 0, proba=proba, per_class=each, sanity=sanity, class_names=names,
        title=f"{Path(args.run).name}: {args.split} image {args.index} "
        f"(label {names[int(labels[args.index])]}), "
        f"{result.method} of {result.target.describe(0, names)}",
    )
    out = (
        Path(args.out)
        if args.out
        else Path(args.run) / "figures" / f"attribution-{args.method}-{args.index}.png"
    )
    info(f"wrote {save_figure(fig, out)}")
    return 0
