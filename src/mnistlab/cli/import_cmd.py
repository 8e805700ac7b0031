"""`mnistlab import keras|onnx FILE --out RUN` and `mnistlab export RUN --format onnx --out FILE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_dataset_options, info


def register(sub: argparse._SubParsersAction) -> None:
    from ..importers import PREPROCESS_CHOICES, READERS

    p = sub.add_parser(
        "import",
        help="open a Keras (.keras/.h5) or ONNX model as a run directory",
        description="Read a Keras (.keras, .h5; no TensorFlow needed) or ONNX model and write it as a run "
        "that every command, the report and the web page open. A PyTorch module: export it with "
        "torch.onnx.export and import the .onnx file (or wrap it with mnistlab.from_torch in Python). "
        "See docs/model-import.md for what is supported.",
    )
    p.add_argument("format", choices=list(READERS), help="the file's format")
    p.add_argument("file", type=Path, help="the model file")
    p.add_argument("--out", type=Path, required=True, help="run directory to write, e.g. runs/my-keras-cnn")
    p.add_argument(
        "--preprocess",
        default="auto",
        choices=list(PREPROCESS_CHOICES),
        help="what the model expects done to raw 0..255 pixels: unit (/255), standard, none; auto: none "
        "when the model rescales its input itself, else unit",
    )
    add_dataset_options(p, help="the dataset the model was trained on (default: mnist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(func=cmd_import)

    e = sub.add_parser(
        "export",
        help="write a run's model as an ONNX file",
        description="Export an MLP or CNN run to ONNX. The file takes raw pixels (N, 28, 28), 0..255, "
        "and gives probabilities; the run's preprocessing is inside the graph.",
    )
    e.add_argument("run", type=Path, help="run directory")
    e.add_argument("--format", default="onnx", choices=["onnx"], help="file format (default onnx)")
    e.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")
    e.set_defaults(func=cmd_export)


def cmd_import(args: argparse.Namespace) -> int:
    from ..importers import import_model
    from ..runs import read_manifest

    run = import_model(
        args.format,
        args.file,
        args.out,
        preprocess=args.preprocess,
        dataset=args.dataset,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
    )
    manifest = read_manifest(run)
    from ..importers import original_names

    info(f"imported {args.file} as {'an MLP' if manifest['kind'] == 'mlp' else 'a CNN'} run: {run}")
    for name, sources in original_names(manifest).items():
        info(f"  {name:<10} <- {sources}")
    for note in manifest["imported"].get("notes", []):
        info(f"  note: {note}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export_onnx import export_run

    out = export_run(args.run, args.out, args.format)
    info(f"wrote {out}")
    return 0
