"""`mnistlab data fetch | info | show | verify`."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..errors import ConfigError
from .common import (
    add_dataset_options,
    add_split_option,
    info,
    load_dataset_from_args,
    parse_indices,
    positive_count,
    save_figure,
)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="fetch, inspect and verify datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    fetch = data_sub.add_parser("fetch", help="load a dataset from the first source that serves and cache it")
    add_dataset_options(fetch)
    fetch.add_argument("--force", action="store_true", help="ignore the cache and fetch again")
    fetch.set_defaults(func=cmd_fetch)

    show_info = data_sub.add_parser(
        "info", help="counts, class histogram, source, cache path, checksum status"
    )
    add_dataset_options(show_info)
    show_info.set_defaults(func=cmd_info)

    show = data_sub.add_parser("show", help="write one image or a labelled grid as PNG")
    add_dataset_options(show)
    add_split_option(show)
    show.add_argument("--index", action="append", metavar="I", help="image index; repeat, or 1,2,3 or 10-20")
    show.add_argument("--first", type=positive_count, metavar="N", help="the first N images of the split")
    show.add_argument("--cols", type=positive_count, default=8, help="images per row (default 8)")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.set_defaults(func=cmd_show)

    verify = data_sub.add_parser("verify", help="re-check the cached copy against the pinned checksums")
    add_dataset_options(verify)
    verify.set_defaults(func=cmd_verify)


def cmd_fetch(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = load_dataset_from_args(args, force=args.force)
    info(
        f"{ds.name}: {len(ds.train_images)} train + {len(ds.test_images)} test images ready in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..data.sources import cache_path

    ds = load_dataset_from_args(args)
    print(f"dataset     {ds.name}")
    print(f"source      {ds.source}")
    print(f"cache       {cache_path(ds.name)}")
    print("checksums   ok (sha256 of all four arrays match the pinned values)")
    print(f"images      {ds.train_images.shape[1]}x{ds.train_images.shape[2]} uint8")
    for split in ("train", "test"):
        images, labels = ds.split(split)
        counts = np.bincount(labels, minlength=len(ds.class_names))
        print(f"{split:<11} {len(images)} images; labels start {', '.join(map(str, labels[:5]))}")
        print("  per class " + "  ".join(f"{name}:{count}" for name, count in zip(ds.class_names, counts)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..viz.images import image_grid

    indices = parse_indices(args.index)
    if not indices and not args.first:
        raise ConfigError("no images chosen; pass --index I (repeatable) or --first N")
    ds = load_dataset_from_args(args)
    images, labels = ds.split(args.split)
    if args.first:
        indices += list(range(min(args.first, len(images))))
    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        raise ConfigError(f"index {bad[0]} is outside the {args.split} split (0..{len(images) - 1})")
    titles = [f"#{i}: {ds.class_names[labels[i]]}" for i in indices]
    fig = image_grid(images[indices], titles, ncols=args.cols, suptitle=f"{ds.name} {args.split}")
    path = save_figure(fig, args.out)
    print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..data.sources import cache_path, dataset_info, read_cache

    path = cache_path(args.dataset)
    if not path.exists():
        raise ConfigError(
            f"{path}: no cached copy of {args.dataset}; run `mnistlab data fetch --dataset {args.dataset}` "
            "first"
        )
    read_cache(path, dataset_info(args.dataset))  # raises with the reason on any mismatch
    print(f"{path}: ok, all four arrays match the pinned SHA-256 checksums")
    return 0
