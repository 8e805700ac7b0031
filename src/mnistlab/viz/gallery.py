"""Galleries: optimal input patterns with their activations, misclassified images per confused pair."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)


def plot_oip_gallery(result, *, ncols: int = 16, cmap: str = "gray_r", cell_inches: float = 0.85) -> Figure:
    """Each unit's optimized input with ``unit: final activation`` above it; dead units are greyed.

    Shown like every digit in mnistlab's figures: dark = ink (pixel value 255). The patterns are
    tiled into one image drawn once: a subplot per unit made the figure cost more than the
    optimization itself for a 128-map layer (docs/performance.md, Inspection).
    """
    images = np.asarray(result.images, dtype=np.float32)
    n, height, width = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    dead = np.asarray(result.dead)
    gap_x = round(width * 0.12)  # between columns
    gap_y = round(height * 0.3)  # above each row: room for the labels
    pitch_x, pitch_y = width + gap_x, height + gap_y
    mosaic = np.full((nrows * pitch_y, ncols * pitch_x - gap_x), np.nan, np.float32)  # nan: background
    # A dead unit's pattern at 35% strength: what drawing it 65% transparent over white shows.
    shown = np.where(dead[:, None, None], 0.35 * images, images)
    rows, cols = np.divmod(np.arange(n), ncols)
    for k in range(n):
        top, left = rows[k] * pitch_y + gap_y, cols[k] * pitch_x
        mosaic[top : top + height, left : left + width] = shown[k]
    cell_px = cell_inches / pitch_x  # inches per mosaic pixel
    title_inches = 0.3
    fig = Figure(figsize=(mosaic.shape[1] * cell_px + 0.1, mosaic.shape[0] * cell_px + title_inches))
    ax = fig.add_axes((0.05 / fig.get_figwidth(), 0.02 / fig.get_figheight(),
                       mosaic.shape[1] * cell_px / fig.get_figwidth(),
                       mosaic.shape[0] * cell_px / fig.get_figheight()))
    ax.set_axis_off()
    palette = colormaps[cmap].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=palette, vmin=0, vmax=255, interpolation="nearest", aspect="equal")
    kind = result.unit_kind
    for k in range(n):
        unit = int(result.units[k])
        label = f"{unit}: dead" if dead[k] else f"{unit}: {result.final[k]:.2f}"
        ax.text(cols[k] * pitch_x + width / 2, rows[k] * pitch_y + gap_y - 1.5, label, fontsize=7,
                ha="center", va="bottom", color="#999999" if dead[k] else "black")
    reached = int(result.reached().sum())
    fig.suptitle(
        f"optimal input patterns, {result.layer}: {n} {kind}s optimized together, {result.steps} steps, "
        f"seed {result.seed}; {reached} reached 10x their start, {int(dead.sum())} dead "
        f"(title: {kind}: final {'mean ' if kind == 'map' else ''}activation)", fontsize=10,
        y=1 - 0.05 / fig.get_figheight(), va="top",
    )
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
