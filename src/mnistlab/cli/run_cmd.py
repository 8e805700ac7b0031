"""Commands that work on any run directory, whichever engine trained it:
`evaluate RUN`, `predict RUN --index I`, `layers RUN`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .common import add_split_option, info, parse_indices, save_figure


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="test accuracy, confusion matrix and training curves of a run")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: RUN/figures)")
    add_split_option(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="class probabilities for chosen images")
    predict.add_argument("run", help="run directory")
    predict.add_argument(
        "--index", action="append", required=True, metavar="I", help="image index (repeatable; 1,2 or 3-5)"
    )
    add_split_option(predict)
    predict.set_defaults(func=cmd_predict)

    layers = sub.add_parser("layers", help="the layer names of a run, usable with --layer elsewhere")
    layers.add_argument("run", help="run directory")
    layers.set_defaults(func=cmd_layers)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..inspect import confusions, load_run
    from ..metrics import confusion_text
    from ..runs import read_history
    from ..viz.confusion import plot_confusion
    from ..viz.curves import plot_history

    model, dataset, manifest = load_run(args.run)
    result = confusions(model, dataset, args.split, progress=sys.stderr.isatty())
    names = list(dataset.class_names)
    print(f"{args.split} accuracy: {result.accuracy:.4f} ({int(result.matrix.trace())}/{len(result.labels)}) "
          f"[{manifest['kind']} run {args.run}]")
    print(confusion_text(result.matrix, names))
    pairs = result.pairs(5)
    if pairs:
        print(
            "most confused (true -> predicted: count): "
            + ", ".join(f"{names[t]}->{names[p]}: {c}" for t, p, c in pairs)
        )
    out = Path(args.out) if args.out else Path(args.run) / "figures"
    cm_path = save_figure(
        plot_confusion(result.matrix, names, title=f"{args.split} accuracy {result.accuracy:.2%}"),
        out / "confusion.png",
    )
    history = read_history(Path(args.run))
    written = [cm_path]
    if history:
        written.append(save_figure(plot_history(history), out / "curves.png"))
    info("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inspect import load_run

    model, dataset, _ = load_run(args.run)
    images, labels = dataset.split(args.split)
    indices = parse_indices(args.index)
    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        raise ConfigError(f"index {bad[0]} is outside the {args.split} split (0..{len(images) - 1})")
    probabilities = model.predict_proba(images[indices])
    names = list(dataset.class_names)
    header = "index  label  pred   " + " ".join(f"{str(n)[:6]:>6}" for n in names)
    print(header)
    for i, p in zip(indices, probabilities):
        print(
            f"{i:<6} {str(names[labels[i]])[:6]:<6} {str(names[int(np.argmax(p))])[:6]:<6} "
            + " ".join(f"{v:6.3f}" for v in p)
        )
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from ..importers import original_names
    from ..models import load_model
    from ..runs import read_manifest

    model = load_model(args.run)
    sources = original_names(read_manifest(Path(args.run)))
    probe = model.activations(np.zeros((1, 28, 28), np.uint8))
    for name in model.layer_names():
        shape = str(tuple(probe[name].shape[1:]))
        print(f"{name:<10} {shape:<16} {sources.get(name, '')}".rstrip())
    return 0
