"""Attribution figures (mnistlab.inspect.attribution): the image, its map, the map laid over the
image, the class probabilities, one map per class and, optionally, the sanity-check cascade.

Signed maps use a diverging scale centred on zero (red raises the objective, blue lowers it), one
scale per panel set so the panels of a row compare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)

DIVERGING = "RdBu_r"


def _limit(*maps: np.ndarray) -> float:
    peak = max(float(np.max(np.abs(m))) for m in maps)
    return peak if peak > 0 else 1.0


def _show_map(ax, values: np.ndarray, limit: float, title: str = "", image: np.ndarray | None = None) -> None:
    ax.set_axis_off()
    if image is not None:
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        alpha = np.clip(np.abs(values) / limit, 0, 1) * 0.85
        ax.imshow(values, cmap=DIVERGING, vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest")
    else:
        ax.imshow(values, cmap=DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8, pad=2)


def plot_attribution(
    result,
    index: int = 0,
    *,
    proba: np.ndarray | None = None,
    per_class=None,
    sanity=None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One image's attribution. ``proba``: its class probabilities (classes,); ``per_class``: an
    Attribution of the same image repeated once per class (target k for row k); ``sanity``: a
    SanityResult whose image ``index`` is drawn as a row of maps, trained model first."""
    n_classes = len(proba) if proba is not None else 10
    names = [str(c) for c in (class_names or range(n_classes))]
    image = result.images[index]
    values = result.maps[index]
    rows = 1 + (per_class is not None) + (sanity is not None)
    cols = max(10, len(sanity.layers) + 1 if sanity is not None else 0)
    fig = Figure(figsize=(cols * 1.15, 1.55 * rows + 1.1))
    grid = fig.add_gridspec(rows, cols, height_ratios=[1.6] + [1] * (rows - 1))
    limit = _limit(values)
    target = result.target.describe(index, names)
    top = [fig.add_subplot(grid[0, 0:2]), fig.add_subplot(grid[0, 2:4]), fig.add_subplot(grid[0, 4:6])]
    top[0].imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    top[0].set_axis_off()
    top[0].set_title("image", fontsize=9)
    _show_map(top[1], values, limit, f"{result.method}: {target}")
    _show_map(top[2], values, limit, "overlay", image=image)
    if proba is not None:
        ax = fig.add_subplot(grid[0, 6:])
        colors = ["#bbbbbb"] * n_classes
        for cls, color in (
            (result.target.positive[index], "#c0392b"),
            (None if result.target.negative is None else result.target.negative[index], "#2c7fb8"),
        ):
            if cls is not None:
                colors[int(cls)] = color
        ax.bar(range(n_classes), proba, color=colors)
        ax.set_xticks(range(n_classes), names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("class probabilities", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    note = [f"objective {result.objective[index]:.4g}"]
    if result.completeness_error is not None:
        note.append(f"sum of map {float(values.sum()):.4g} vs f(x) - f(baseline) "
                    f"{result.objective[index] - result.baseline_objective[index]:.4g} "
                    f"(error {float(result.completeness_error[index]):.2g})")
    if result.layer:
        note.append(f"layer {result.layer}")
    row = 1
    if per_class is not None:
        maps = per_class.maps
        shared = _limit(*maps)
        for k in range(min(len(maps), cols)):
            p = f" {proba[k]:.0%}" if proba is not None else ""
            _show_map(fig.add_subplot(grid[row, k]), maps[k], shared, f"p({names[k]}){p}")
        row += 1
    if sanity is not None:
        maps = [sanity.trained.maps[index]] + [r.maps[index] for r in sanity.randomized]
        titles = ["trained"] + [
            f"random to {layer}\nρ {sanity.rank_correlation[k, index]:.2f} / "
            f"{sanity.signed_rank_correlation[k, index]:.2f}"
            for k, layer in enumerate(sanity.layers)
        ]
        note.append(
            "bottom row: weights randomized from the top down, ρ = Spearman with the trained map (|map| / "
            "signed)"
        )
        for k, (m, t) in enumerate(zip(maps, titles)):
            _show_map(fig.add_subplot(grid[row, k]), m, _limit(m), t)
    fig.suptitle((title or f"{result.method} attribution of {target}") + "\n" + "; ".join(note), fontsize=9)
    fig.tight_layout()
    return fig


def plot_attribution_rows(
    result, class_names: Sequence[str] | None = None, captions: Sequence[str] | None = None
) -> Figure:
    """Several images, one row each: image, map, overlay (the report's ambiguous-pair section)."""
    n = len(result.maps)
    names = [str(c) for c in (class_names or range(10))]
    fig = Figure(figsize=(5.2, 1.75 * n + 0.3))
    axes = fig.subplots(n, 3, squeeze=False)
    limit = _limit(result.maps)
    for i in range(n):
        axes[i, 0].imshow(result.images[i], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        axes[i, 0].set_axis_off()
        axes[i, 0].set_title(captions[i] if captions else f"image {i}", fontsize=8, pad=2)
        _show_map(axes[i, 1], result.maps[i], limit, f"{result.method}: {result.target.describe(i, names)}")
        _show_map(axes[i, 2], result.maps[i], limit, "overlay", image=result.images[i])
    fig.tight_layout()
    return fig
