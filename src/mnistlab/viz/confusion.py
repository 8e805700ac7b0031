from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str] | None = None, *, title: str | None = None
) -> Figure:
    """Two panels: counts, and rows normalized to 1 (what share of each true class went where)."""
    cm = np.asarray(cm)
    n = cm.shape[0]
    names = [str(c) for c in (class_names or range(n))]
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig = Figure(figsize=(12, 5.4))
    for ax, data, label, fmt in zip(
        fig.subplots(1, 2), (cm, normalized), ("counts", "row-normalized"), ("d", ".2f")
    ):
        # A log-ish colour scale would hide the diagonal; instead grey the diagonal and colour errors.
        off = data.astype(float).copy()
        np.fill_diagonal(off, np.nan)
        ax.imshow(
            off, cmap="Reds", vmin=0,
            vmax=np.nanmax(off) if np.isfinite(off).any() and np.nanmax(off) > 0 else 1,
        )
        for i in range(n):
            for j in range(n):
                value = data[i, j]
                text = (
                    format(int(value), "d")
                    if fmt == "d"
                    else f"{value:.2f}".lstrip("0")
                    if value < 1
                    else "1"
                )
                if fmt != "d" and value == 0:
                    text = ""
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=7, color="black" if i != j else "#1f4e9a",
                    fontweight="bold" if i == j else "normal",
                )
        ax.set_xticks(
            range(n), names, rotation=45 if max(map(len, names)) > 2 else 0,
            ha="right" if max(map(len, names)) > 2 else "center", fontsize=8,
        )
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
