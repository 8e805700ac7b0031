"""Galleries: optimal input patterns with their activations, misclassified images per confused pair."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)


def plot_oip_gallery(result, *, ncols: int = 16, cmap: str = "gray_r", cell_inches: float = 0.85) -> Figure:
    """Each unit's optimized input with ``unit: final activation`` above it; dead units are greyed.

    Shown like every digit in mnistlab's figures: dark = ink (pixel value 255).
    """
    images = np.asarray(result.images)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(
        figsize=(ncols * cell_inches, nrows * (cell_inches * 0.88 + 0.22) + 0.35)
    )  # square images: no slack rows
    axes = fig.subplots(nrows, ncols, squeeze=False)
    dead = result.dead
    kind = result.unit_kind
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        ax.imshow(
            images[k], cmap=cmap, vmin=0, vmax=255, interpolation="nearest", alpha=0.35 if dead[k] else 1.0
        )
        label = (
            f"{int(result.units[k])}: dead" if dead[k] else f"{int(result.units[k])}: {result.final[k]:.2f}"
        )
        ax.set_title(label, fontsize=7, pad=2, color="#999999" if dead[k] else "black")
    reached = int(result.reached().sum())
    fig.suptitle(
        f"optimal input patterns, {result.layer}: {n} {kind}s optimized together, {result.steps} steps, "
        f"seed {result.seed}; {reached} reached 10x their start, {int(dead.sum())} dead "
        f"(title: {kind}: final {'mean ' if kind == 'map' else ''}activation)", fontsize=10,
        y=1 - 0.05 / fig.get_figheight(), va="top",
    )
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.4 / height, wspace=0.08, hspace=0.3)
    return fig


def plot_pair_gallery(
    images: np.ndarray,
    rows: Sequence[tuple[str, Sequence[int]]],
    captions: dict[int, str],
    *,
    per_row: int = 8,
    cell_inches: float = 1.0,
    title: str | None = None,
) -> Figure:
    """One row per (label, indices), e.g. ("4 -> 9 (12)", [idx, ...]); ``captions[idx]`` above each image."""
    rows = [(label, list(idx)[:per_row]) for label, idx in rows]
    nrows = max(1, len(rows))
    fig = Figure(figsize=(1.3 + per_row * cell_inches, nrows * (cell_inches + 0.3) + (0.5 if title else 0.1)))
    axes = fig.subplots(
        nrows, per_row + 1, squeeze=False, gridspec_kw={"width_ratios": [1.3] + [cell_inches] * per_row}
    )
    for r, (label, idx) in enumerate(rows):
        axes[r, 0].set_axis_off()
        axes[r, 0].text(1.0, 0.5, label, ha="right", va="center", fontsize=10, transform=axes[r, 0].transAxes)
        for c in range(per_row):
            ax = axes[r, c + 1]
            ax.set_axis_off()
            if c < len(idx):
                ax.imshow(images[idx[c]], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
                ax.set_title(captions.get(idx[c], ""), fontsize=7, pad=2)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_confusion_gallery(conf, images: np.ndarray, *, top: int = 5, per_pair: int = 8) -> Figure:
    """The misclassified images of the ``top`` most confused pairs, most confident mistakes first."""
    names = conf.class_names or tuple(str(i) for i in range(conf.matrix.shape[0]))
    rows, captions = [], {}
    for true, pred, count in conf.pairs(top):
        idx = conf.misclassified(true, pred, per_pair)
        rows.append((f"true {names[true]}\n-> {names[pred]} ({count})", idx))
        for i in idx:
            captions[int(i)] = f"#{int(i)} p={conf.proba[i, pred]:.2f}"
    return plot_pair_gallery(
        images, rows, captions, per_row=per_pair,
        title=f"most confused pairs ({conf.split}): misclassified images, p = probability of the wrong class",
    )
