"""Figures for a class comparison (mnistlab.inspect.compare): marked grids and the ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)
from .activations import Marks, plot_activations

RED, YELLOW = "red", "gold"


def plot_contrast(
    comparison, layer: str, *, standardize: bool = False, cmap: str = "viridis", ncols: int | None = None
) -> Figure:
    """A images in the top row, B images below, each beside its grid of ``layer``.

    Conv maps are shown divided by their peak over these images, the scale on which "strongly
    active" (>= ``rel``, 0.5 by default) is defined. Red circles: strongly active in every A image
    and no B image. Yellow: in every A image and in some B image (marked on the A grids, and on each
    B grid where that B image has it).
    """
    contrast = comparison.contrasts[layer]
    acts = np.concatenate([comparison.acts_a[layer], comparison.acts_b[layer]])
    images = np.concatenate([comparison.a.images, comparison.b.images])
    n_a, n_b = len(comparison.a), len(comparison.b)
    marks: list[Marks | None] = [Marks([contrast.red, contrast.yellow], (RED, YELLOW))] * n_a
    marks += [Marks([contrast.yellow & contrast.strong_b[i]], (YELLOW,)) for i in range(n_b)]
    per_row = max(n_a, n_b)
    # Pad the shorter set so A and B each fill their own row.
    if n_a != n_b:
        blank_img = np.zeros((1,) + images.shape[1:], images.dtype)
        blank_act = np.zeros((1,) + acts.shape[1:], acts.dtype)
        fill_a, fill_b = per_row - n_a, per_row - n_b
        images = np.concatenate([images[:n_a]] + [blank_img] * fill_a + [images[n_a:]] + [blank_img] * fill_b)
        acts = np.concatenate([acts[:n_a]] + [blank_act] * fill_a + [acts[n_a:]] + [blank_act] * fill_b)
        marks = marks[:n_a] + [None] * fill_a + marks[n_a:] + [None] * fill_b
    titles = comparison.a.names() + [""] * (per_row - n_a) + comparison.b.names() + [""] * (per_row - n_b)
    fig = plot_activations(
        images, acts, layer=layer, titles=titles, ncols=ncols, standardize=standardize, cmap=cmap,
        shared_scale=True, per_map_peak=True, marks=marks, panels_per_row=per_row,
        row_titles=[f"A: {comparison.a_name}", f"B: {comparison.b_name}"],
    )
    red, yellow = int(contrast.red.sum()), int(contrast.yellow.sum())
    fig.suptitle(
        f"{layer}: {comparison.a_name} (A) vs {comparison.b_name} (B) - red: active in all A, no B "
        f"({red}); yellow: all A and some B ({yellow})",
        fontsize=11,
    )
    return fig


def plot_ranking(
    rows: Sequence[dict], *, a_name: str = "A", b_name: str = "B", title: str | None = None
) -> Figure:
    """Horizontal bars of AUC - 0.5 for the most discriminative units (rows from Comparison.table())."""
    rows = list(rows)
    fig = Figure(figsize=(7.5, 0.32 * max(len(rows), 3) + 1.2))
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "nothing to rank", ha="center", va="center")
        ax.set_axis_off()
        return fig
    labels = [f"{r['layer']} {r['kind']} {r['unit']}" for r in rows][::-1]
    values = [r["auc"] - 0.5 for r in rows][::-1]
    colors = ["#c0392b" if v > 0 else "#2c7fb8" for v in values]
    y = np.arange(len(rows))
    ax.barh(y, values, color=colors)
    for yi, r in zip(y, rows[::-1]):
        v = r["auc"] - 0.5
        ax.text(v + (0.01 if v >= 0 else -0.01), yi, f"AUC {r['auc']:.3f}, d {r['smd']:+.2f}", va="center",
                ha="left" if v >= 0 else "right", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-0.95, 0.95)  # room for the labels beside the longest bars
    ax.set_xticks([-0.5, -0.25, 0, 0.25, 0.5], ["0 (B)", ".25", ".5", ".75", "1 (A)"])
    ax.set_xlabel(f"AUC: probability that a {a_name} scores higher than a {b_name}")
    ax.set_title(
        title or f"most discriminative units, {a_name} (red: higher for {a_name}) vs {b_name} (blue)",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
