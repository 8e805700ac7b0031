"""Looking inside a run: `show-activations`, `compare`, `ambiguous`, `confusions`, `oip`, `report`.

Each command writes PNG (or HTML) files, default under RUN/figures/, prints tables on stdout and
the paths it wrote on stderr. The analysis lives in mnistlab.inspect; this is only the shell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .common import add_run_options, info, parse_indices, positive_count, save_figure


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two classes like 4,9, got {text!r}") from None
    return a, b


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show-activations", help="every map/node of a layer for chosen images, beside each image"
    )
    add_run_options(p)
    p.add_argument(
        "--layer", action="append", metavar="NAME",
        help="layer name (repeatable; default: conv and dense layers)",
    )
    p.add_argument("--index", action="append", metavar="I", help="image index (repeatable; 1,2 or 3-5)")
    p.add_argument("--label", type=int, help="instead of --index: the first --n images of this class")
    p.add_argument("--n", type=positive_count, default=3, help="with --label: how many images (default 3)")
    p.add_argument(
        "--cols", type=positive_count, help="maps per row (default 8; dense layers 10 nodes per row)"
    )
    p.add_argument(
        "--standardize", action="store_true",
        help="standardize each map per image (the seed's scale_img_vals)",
    )
    p.add_argument(
        "--clip", type=float, default=2.0, help="with --standardize: clip at this many std (default 2)"
    )
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap (default viridis)")
    p.add_argument(
        "--no-shared-scale", dest="shared_scale", action="store_false", help="one colour scale per image"
    )
    p.add_argument(
        "--out", metavar="PNG",
        help="output file; {layer} is replaced (default RUN/figures/activations-LAYER.png)",
    )
    p.set_defaults(func=cmd_show_activations)

    p = sub.add_parser(
        "compare", help="units active in all of set A and none of set B; most discriminative maps and nodes"
    )
    add_run_options(p)
    p.add_argument("--a", required=True, metavar="SPEC", help="set A: label=4 (or index=1,2,3)")
    p.add_argument("--b", required=True, metavar="SPEC", help="set B: label=9 (or index=...)")
    p.add_argument(
        "--n", type=positive_count, default=3, help="images per set when chosen by label (default 3)"
    )
    p.add_argument(
        "--a-indices", action="append", metavar="I", help="set A's images by index (overrides --n)"
    )
    p.add_argument("--b-indices", action="append", metavar="I", help="set B's images by index")
    p.add_argument("--layer", action="append", metavar="NAME", help="layers (default: conv and dense layers)")
    p.add_argument(
        "--rel", type=float, default=0.5,
        help="strongly active = at least this share of the map's peak (default 0.5)",
    )
    p.add_argument("--top", type=positive_count, default=15, help="rows of the ranking table (default 15)")
    p.add_argument("--standardize", action="store_true", help="standardize each map per image in the figures")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN/figures)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ambiguous", help="images of one class closest to another, and the nodes that decided")
    add_run_options(p)
    p.add_argument(
        "--pair", type=_pair, default=(4, 9), metavar="A,B", help="true class A, rival class B (default 4,9)"
    )
    p.add_argument("--n", type=positive_count, default=6, help="how many images (default 6)")
    p.add_argument("--layer", help="dense layer to explain (default: the last hidden dense layer)")
    p.add_argument("--correct-only", action="store_true", help="only images still classified as A")
    p.add_argument("--out", metavar="PNG", help="output file (default RUN/figures/ambiguous-A-B.png)")
    p.set_defaults(func=cmd_ambiguous)

    p = sub.add_parser("confusions", help="confusion matrix, most confused pairs, misclassified galleries")
    add_run_options(p)
    p.add_argument("--top", type=positive_count, default=5, help="how many confused pairs (default 5)")
    p.add_argument(
        "--per-pair", type=positive_count, default=8, help="images per pair in the gallery (default 8)"
    )
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN/figures)")
    p.set_defaults(func=cmd_confusions)

    p = sub.add_parser(
        "oip", help="optimal input patterns: gradient ascent from multi-scale noise, all maps in one batch"
    )
    add_run_options(p, split=False)
    p.add_argument("--layer", help="layer (default: the last conv layer, or an MLP's first hidden layer)")
    p.add_argument(
        "--maps", "--units", dest="maps", metavar="LIST",
        help="maps or nodes, e.g. 0-127 or 3,5,9 (default all)",
    )
    p.add_argument("--steps", type=int, default=70, help="gradient steps (default 70)")
    p.add_argument(
        "--step-size", type=float, default=9.0, help="pixel levels (0..255, rms) per step (default 9)"
    )
    p.add_argument("--scales", default="1,2,4,7", help="noise length scales in pixels (default 1,2,4,7)")
    p.add_argument(
        "--decay", type=float, default=0.01, help="share of every pixel faded each step (default 0.01)"
    )
    p.add_argument(
        "--blur", type=float, default=0.5, help="Gaussian smoothing of each gradient, in pixels (default 0.5)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cols", type=positive_count, default=16, help="images per gallery row (default 16)")
    p.add_argument(
        "--out", metavar="PNG",
        help="gallery file (default RUN/figures/oip-LAYER.png); the patterns go beside it as .npz",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=cmd_oip)

    p = sub.add_parser(
        "report", help="one self-contained HTML page: summary, curves, confusions, 4 vs 9, ambiguous, OIPs"
    )
    add_run_options(p)
    p.add_argument("--out", metavar="HTML", help="output file (default RUN/report.html)")
    p.add_argument(
        "--pair", type=_pair, default=(4, 9), metavar="A,B", help="classes to compare (default 4,9)"
    )
    p.add_argument(
        "--oip-layer", help="layer for the OIP gallery (default: last conv layer / first hidden layer)"
    )
    p.add_argument("--oip-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_report)


def _load(args: argparse.Namespace):
    from ..inspect import load_run

    model, dataset, _ = load_run(args.run, args.dataset, data_dir=args.data_dir)
    return model, dataset


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if getattr(args, "out", None) else Path(args.run) / "figures"


def _layers(model, names: list[str] | None) -> list[str]:
    from ..inspect.activations import default_layers

    if not names:
        return default_layers(model)
    return model.check_layers([n for name in names for n in name.split(",") if n])


def cmd_show_activations(args: argparse.Namespace) -> int:
    from ..inspect.activations import compute_activations, select_images
    from ..viz.activations import plot_activations

    model, dataset = _load(args)
    layers = _layers(model, args.layer)
    if args.index and args.label is not None:
        raise ConfigError("choose images with --index or with --label, not both")
    if args.index:
        chosen = select_images(dataset, args.split, indices=parse_indices(args.index))
    elif args.label is not None:
        chosen = select_images(dataset, args.split, label=args.label, n=args.n)
    else:
        raise ConfigError("choose images with --index I (repeatable) or --label L [--n N]")
    acts = compute_activations(model, chosen, layers + ["output"])
    names = chosen.names()
    print(f"{'image (label)':<16} {'pred':>4}  p(pred)")
    for k, name in enumerate(names):
        p = acts["output"][k]
        print(f"{name:<16} {dataset.class_names[int(np.argmax(p))]:>4}  {float(np.max(p)):.3f}")
    written = []
    for layer in layers:
        fig = plot_activations(
            chosen.images, acts[layer], layer=layer, titles=names, ncols=args.cols,
            standardize=args.standardize, clip=args.clip, cmap=args.cmap, shared_scale=args.shared_scale,
        )
        if args.out:
            template = (
                args.out
                if "{layer}" in args.out or len(layers) == 1
                else str(Path(args.out).with_suffix("")) + "-{layer}.png"
            )
            path = Path(template.replace("{layer}", layer))
        else:
            path = Path(args.run) / "figures" / f"activations-{layer}.png"
        written.append(save_figure(fig, path))
    for path in written:
        info(f"wrote {path}")
    return 0


def _set_spec(spec: str, indices: list[str] | None) -> tuple[int | None, list[int] | None]:
    """'label=4' -> (4, None); 'index=1,2' -> (None, [1, 2]); --x-indices win over the spec's indices."""
    key, _, value = spec.partition("=")
    key = key.strip().lower()
    label, idx = None, None
    try:
        if key in ("label", "class"):
            label = int(value)
        elif key in ("index", "indices"):
            idx = parse_indices([value])
        elif value == "" and key.isdigit():
            label = int(key)
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"bad set {spec!r}; use label=4 or index=1,2,3") from None
    if indices:
        idx = parse_indices(indices)
    return label, idx


def cmd_compare(args: argparse.Namespace) -> int:
    from ..inspect.activations import select_images
    from ..inspect.compare import compare_sets
    from ..viz.compare import plot_contrast, plot_ranking

    model, dataset = _load(args)
    a_label, a_idx = _set_spec(args.a, args.a_indices)
    b_label, b_idx = _set_spec(args.b, args.b_indices)
    layers = _layers(model, args.layer)
    a_set = (
        select_images(dataset, args.split, indices=a_idx)
        if a_idx
        else select_images(dataset, args.split, label=a_label, n=args.n)
    )
    b_set = (
        select_images(dataset, args.split, indices=b_idx)
        if b_idx
        else select_images(dataset, args.split, label=b_label, n=args.n)
    )
    names = dataset.class_names
    # Rank over whole classes: the given labels, or else the labels of the chosen images when they agree.
    rank_a_label = a_label if a_label is not None else _single_label(a_set)
    rank_b_label = b_label if b_label is not None else _single_label(b_set)
    rank_a = select_images(dataset, args.split, label=rank_a_label) if rank_a_label is not None else None
    rank_b = select_images(dataset, args.split, label=rank_b_label) if rank_b_label is not None else None
    a_name = names[rank_a_label] if rank_a_label is not None else "A"
    b_name = names[rank_b_label] if rank_b_label is not None else "B"
    comparison = compare_sets(model, a_set, b_set, layers, a_name=a_name, b_name=b_name, rel=args.rel,
                              rank_a=rank_a, rank_b=rank_b)
    print(f"A = {a_name}: {' '.join(a_set.names())}")
    print(f"B = {b_name}: {' '.join(b_set.names())}")
    print(comparison.summary_table().to_text())
    out = _out_dir(args)
    written = [
        save_figure(
            plot_contrast(comparison, layer, standardize=args.standardize),
            out / f"compare-{_slug(a_name)}-{_slug(b_name)}-{layer}.png",
        )
        for layer in layers
    ]
    if comparison.rankings:
        top = comparison.table(args.top)
        print(f"\n{comparison.ranking_table(args.top).to_text()}")
        written.append(
            save_figure(
                plot_ranking(top, a_name=a_name, b_name=b_name),
                out / f"compare-{_slug(a_name)}-{_slug(b_name)}-ranking.png",
            )
        )
    for path in written:
        info(f"wrote {path}")
    return 0


def _single_label(chosen) -> int | None:
    labels = set(int(v) for v in chosen.labels) if chosen.labels is not None else set()
    return labels.pop() if len(labels) == 1 else None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text))


def cmd_ambiguous(args: argparse.Namespace) -> int:
    from ..inspect.ambiguous import find_ambiguous
    from ..viz.ambiguous import plot_ambiguous

    model, dataset = _load(args)
    result = find_ambiguous(
        model, dataset, args.pair, n=args.n, split=args.split, layer=args.layer,
        correct_only=args.correct_only,
    )
    names = dataset.class_names
    a, b = result.pair
    print(
        f"{names[a]}s closest to {names[b]} ({args.split} split), smallest margin p({names[a]}) - "
        f"p({names[b]}) first"
    )
    print(
        f"{'index':>6} {'pred':>5} {'p(' + names[a] + ')':>8} {'p(' + names[b] + ')':>8} {'margin':>8}  "
        f"nodes of {result.layer} pulling toward the winner"
    )
    for r in result.table():
        print(
            f"{r['index']:>6} {names[r['predicted']]:>5} {r[f'p{a}']:>8.4f} {r[f'p{b}']:>8.4f} "
            f"{r['margin']:>+8.4f}  {', '.join(map(str, r['top_pull']))}"
        )
    path = Path(args.out) if args.out else Path(args.run) / "figures" / f"ambiguous-{a}-{b}.png"
    info(f"wrote {save_figure(plot_ambiguous(result, names), path)}")
    return 0


def cmd_confusions(args: argparse.Namespace) -> int:
    from ..inspect.confusions import confusions
    from ..metrics import confusion_text
    from ..viz.confusion import plot_confusion
    from ..viz.gallery import plot_confusion_gallery

    model, dataset = _load(args)
    conf = confusions(model, dataset, args.split, progress=sys.stderr.isatty())
    names = list(dataset.class_names)
    print(f"{args.split} accuracy {conf.accuracy:.4f}")
    print(confusion_text(conf.matrix, names))
    print("\nmost confused (true -> predicted: count; hardest indices)")
    for t, p, c in conf.pairs(args.top):
        print(
            f"{names[t]} -> {names[p]}: {c}; {', '.join(map(str, conf.misclassified(t, p, args.per_pair)))}"
        )
    out = _out_dir(args)
    images, _ = dataset.split(args.split)
    written = [
        save_figure(
            plot_confusion(conf.matrix, names, title=f"{args.split} accuracy {conf.accuracy:.2%}"),
            out / "confusion.png",
        ),
        save_figure(
            plot_confusion_gallery(conf, images, top=args.top, per_pair=args.per_pair),
            out / "confused-pairs.png",
        ),
    ]
    for path in written:
        info(f"wrote {path}")
    return 0


def cmd_oip(args: argparse.Namespace) -> int:
    from ..inspect.activations import default_oip_layer, layer_shapes
    from ..inspect.oip import optimize_inputs, parse_units
    from ..models import load_model
    from ..runs import atomic_save_npz
    from ..safe_write import guard
    from ..viz.gallery import plot_oip_gallery

    model = load_model(args.run)
    shapes = layer_shapes(model)
    layer = model.check_layers(args.layer)[0] if args.layer else default_oip_layer(model)
    units = parse_units(args.maps, shapes[layer][0])
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"bad --scales {args.scales!r}; use pixel lengths like 1,2,4,7") from None
    result = optimize_inputs(
        model, layer, units, steps=args.steps, step_size=args.step_size, scales=scales, seed=args.seed,
        decay=args.decay, blur=args.blur, progress=args.progress,
    )
    reached, dead = result.reached(), result.dead
    print(f"{layer}: {len(units)} units, {args.steps} steps in {result.seconds:.2f} s; "
          f"{int(reached.sum())} reached >= 10x their start, {int(dead.sum())} dead")
    if dead.any():
        print("dead (silent from every start): " + ", ".join(map(str, result.units[dead])))
    below = ~reached & ~dead
    if below.any():
        print(
            "below 10x: "
            + ", ".join(f"{u} ({g:.1f}x)" for u, g in zip(result.units[below], result.gain()[below]))
        )
    print(f"{'unit':>5} {'start':>9} {'final':>9}")
    for row in result.table():
        print(
            f"{row['unit']:>5} {row['start']:>9.4f} {row['final']:>9.4f}" + ("  dead" if row["dead"] else "")
        )
    path = Path(args.out) if args.out else Path(args.run) / "figures" / f"oip-{layer}.png"
    written = save_figure(plot_oip_gallery(result, ncols=args.cols), path)
    kept = f"the gallery {written} is written, the run is unchanged"
    with guard(path.with_suffix(".npz"), "the patterns", kept, "another --out"):
        atomic_save_npz(
            path.with_suffix(".npz"),
            {
                "units": result.units, "images": result.images, "start": result.start, "final": result.final,
                "trace": result.trace,
            },
        )
    info(f"wrote {written} and {path.with_suffix('.npz')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..inspect.report import write_report

    path = write_report(
        args.run, args.out, dataset=args.dataset, data_dir=args.data_dir, pair=args.pair,
        oip_layer=args.oip_layer, oip_steps=args.oip_steps, seed=args.seed, split=args.split,
        on_section=lambda name: info(f"report: {name} ..."),
    )
    print(path)
    return 0
