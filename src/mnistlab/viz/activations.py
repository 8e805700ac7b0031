"""Activation grids: every map of a conv layer, or every node of a dense layer, for one or more images.

A layer's activations for one image become one *mosaic*: maps laid out ``ncols`` per row (8 by
default, as in the seed) with a one-pixel gap, or dense nodes as a grid of one-pixel cells. One
``imshow`` per mosaic keeps a 128-map figure quick to draw, and the cell positions are plain
arithmetic (:func:`cell_origin`) that tests and markers share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ..errors import ConfigError
from . import matplotlib  # noqa: F401  (selects the Agg backend)

GAP = 1  # pixels between maps in a mosaic


def dense_columns(units: int) -> int:
    """Columns for a dense layer's node grid: 10 per row up to 100 nodes (70 nodes -> 7 x 10), then wider."""
    return 10 if units <= 100 else int(np.ceil(np.sqrt(units)))


def cell_origin(k: int, ncols: int, h: int, w: int, gap: int = GAP) -> tuple[int, int]:
    """Top-left (row, col) of cell ``k`` in a mosaic of h x w cells, ``ncols`` per row."""
    return (k // ncols) * (h + gap), (k % ncols) * (w + gap)


def mosaic(values: np.ndarray, ncols: int | None = None, gap: int | None = None) -> np.ndarray:
    """One image's layer activations as a 2-D array, NaN in the gaps and unused cells.

    ``values`` is (C, H, W) for a conv layer (one cell per map) or (units,) for a dense layer
    (one pixel per node, no gap).
    """
    values = np.asarray(values, np.float32)
    if values.ndim == 1:
        ncols = ncols or dense_columns(len(values))
        values = values[:, None, None]
        gap = 0 if gap is None else gap
    elif values.ndim != 3:
        raise ValueError(f"expected (C, H, W) maps or (units,) nodes, got shape {values.shape}")
    gap = GAP if gap is None else gap
    c, h, w = values.shape
    ncols = max(1, min(ncols or 8, c))
    nrows = -(-c // ncols)
    out = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap), np.nan, np.float32)
    for k in range(c):
        r, q = cell_origin(k, ncols, h, w, gap)
        out[r : r + h, q : q + w] = values[k]
    return out


def standardize_maps(values: np.ndarray, clip: float | None = 2.0) -> np.ndarray:
    """The seed's ``scale_img_vals``: each map (or each image's dense layer) to zero mean and unit
    std, clipped to +-``clip`` std. A constant map becomes all zeros."""
    values = np.asarray(values, np.float64)
    axes = tuple(range(values.ndim - 2, values.ndim)) if values.ndim >= 3 else (values.ndim - 1,)
    mean = values.mean(axis=axes, keepdims=True)
    std = values.std(axis=axes, keepdims=True)
    out = np.divide(values - mean, std, out=np.zeros_like(values), where=std > 1e-12)
    if clip is not None:
        out = np.clip(out, -clip, clip)
    return out.astype(np.float32)


@dataclass
class Marks:
    """Units to circle on one image's grid: boolean masks of the layer's unit shape, one per colour."""

    masks: Sequence[np.ndarray]
    colors: Sequence[str] = ("red", "gold")


def _mark_positions(mask: np.ndarray, ncols: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic (x, y) centres of the True units of a (C, H, W) or (units,) mask."""
    mask = np.asarray(mask, bool)
    if mask.ndim == 1:
        mask = mask[:, None, None]
    c, h, w = mask.shape
    ks, ys, xs = np.nonzero(mask)
    rows, cols = cell_origin(ks, ncols, h, w, gap)
    return cols + xs, rows + ys


def plot_activations(
    images: np.ndarray,
    acts: np.ndarray,
    *,
    layer: str = "",
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    standardize: bool = False,
    clip: float | None = 2.0,
    cmap: str = "viridis",
    shared_scale: bool = True,
    per_map_peak: bool = False,
    marks: Sequence[Marks | None] | None = None,
    panels_per_row: int | None = None,
    row_titles: Sequence[str] | None = None,
    cell_inches: float = 0.5,
    colorbar: bool = True,
) -> Figure:
    """Each image beside the grid of its activations in one layer.

    ``acts`` is (N, C, H, W) or (N, units) for the N ``images`` (N, 28, 28). ``standardize``
    rescales each map per image (``clip`` in std units); otherwise raw values are shown from 0
    (or the minimum, if negative) to the maximum, one scale for all images when ``shared_scale``
    (so brighter means more active across images), else one per image. ``per_map_peak`` divides
    each conv map by its peak over all the images shown (0..1; the scale on which
    mnistlab.inspect.compare defines "strongly active"). ``marks`` circles units
    (red/yellow by default) on each image's grid; ``panels_per_row`` wraps images into rows
    (``row_titles`` label them, e.g. "A: 4" and "B: 9").
    """
    images, acts = np.asarray(images), np.asarray(acts)
    if images.ndim == 2:
        images, acts = images[None], acts[None]
    n = len(images)
    if len(acts) != n:
        raise ValueError(f"{n} images but {len(acts)} activation rows")
    conv = acts.ndim == 4
    units = acts.shape[1]
    ncols = ncols or (8 if conv else dense_columns(units))
    gap = GAP if conv else 0
    shown = standardize_maps(acts, clip) if standardize else acts.astype(np.float32)
    if per_map_peak and conv and not standardize:
        peak = shown.max(axis=(0, 2, 3), keepdims=True)
        shown = np.divide(shown, peak, out=np.zeros_like(shown), where=peak > 0)
    if standardize:
        lim = clip or float(np.abs(shown).max() or 1)
        lims = [(-lim, lim)] * n
    else:
        if shared_scale:
            lims = [(min(0.0, float(shown.min())), float(shown.max()))] * n
        else:
            lims = [(min(0.0, float(s.min())), float(s.max())) for s in shown]
        lims = [(lo, hi if hi > lo else lo + 1) for lo, hi in lims]
    grids = [mosaic(s, ncols, gap) for s in shown]

    per_row = max(1, min(panels_per_row or n, n))
    nrows = -(-n // per_row)
    gh, gw = grids[0].shape
    # Sizes in inches: a grid cell of a conv map gets cell_inches, a dense node a bit less.
    unit_in = cell_inches / (acts.shape[2] + gap) if conv else cell_inches * 0.5
    grid_w, grid_h = max(gw * unit_in, 1.2), max(gh * unit_in, 0.6)
    img_w = min(1.3, max(0.8, grid_h))
    width_ratios = [img_w, grid_w] * per_row
    fig = Figure(figsize=(per_row * (img_w + grid_w) + 0.6 * per_row + (0.8 if colorbar else 0),
                          nrows * (max(grid_h, img_w) + 0.7) + 0.3))
    axes = fig.subplots(nrows, 2 * per_row, squeeze=False, gridspec_kw={"width_ratios": width_ratios})
    try:
        cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    except KeyError:
        raise ConfigError(
            f"unknown colormap {cmap!r}; try viridis, magma, gray, gray_r, RdBu_r (any matplotlib name)"
        ) from None
    last_im = None
    for k in range(nrows * per_row):
        ax_img, ax_grid = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
        if k >= n:
            ax_img.set_axis_off()
            ax_grid.set_axis_off()
            continue
        ax_img.imshow(images[k], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_anchor("N")
        if titles is not None:
            ax_img.set_title(str(titles[k]), fontsize=9)
        lo, hi = lims[k]
        last_im = ax_grid.imshow(grids[k], cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
        ax_grid.set_anchor("N")
        _label_grid(ax_grid, units, ncols, grids[k].shape, acts.shape[2:] if conv else (1, 1), gap, conv)
        if marks is not None and k < len(marks) and marks[k] is not None:
            for mask, color in zip(marks[k].masks, marks[k].colors):
                xs, ys = _mark_positions(mask, ncols, gap)
                if len(xs):
                    size = 40 if not conv else max(8.0, 220.0 / max(acts.shape[2], 1))
                    ax_grid.scatter(xs, ys, s=size, facecolors="none", edgecolors=color, linewidths=1.2)
        if row_titles is not None and k % per_row == 0 and k // per_row < len(row_titles):
            ax_img.set_ylabel(
                row_titles[k // per_row], fontsize=11, rotation=0, ha="right", va="center", labelpad=12
            )
    what = "standardized per map" if standardize and conv else "standardized" if standardize else (
        "each map divided by its peak over these images" if per_map_peak and conv else
        "shared colour scale" if shared_scale and n > 1 else "")
    fig.suptitle(
        f"{layer}: {units} {'maps' if conv else 'nodes'}" + (f" ({what})" if what else ""), fontsize=11
    )
    show_bar = colorbar and last_im is not None and (standardize or shared_scale or n == 1)
    right = 1 - 0.7 / fig.get_figwidth() if show_bar else 1
    fig.tight_layout(rect=(0, 0, right, 1))
    if show_bar:
        cax = fig.add_axes((right + 0.15 / fig.get_figwidth(), 0.3, 0.12 / fig.get_figwidth(), 0.4))
        fig.colorbar(last_im, cax=cax).ax.tick_params(labelsize=7)
    return fig


def _label_grid(
    ax, units: int, ncols: int, shape: tuple[int, int], cell: tuple[int, int], gap: int, conv: bool
) -> None:
    """Tick labels: the first unit index of each row on the left, the column offset on top."""
    h, w = cell
    nrows = -(-units // ncols)
    ax.set_yticks(
        [r * (h + gap) + (h - 1) / 2 for r in range(nrows)], [str(r * ncols) for r in range(nrows)],
        fontsize=6,
    )
    ax.set_xticks([q * (w + gap) + (w - 1) / 2 for q in range(min(ncols, units))],
                  [f"+{q}" for q in range(min(ncols, units))], fontsize=6)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, pad=1)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if not conv:  # thin lines between node cells so individual nodes stay visible
        for r in range(1, nrows):
            ax.axhline(r - 0.5, color="white", linewidth=0.5)
        for q in range(1, min(ncols, units)):
            ax.axvline(q - 0.5, color="white", linewidth=0.5)
