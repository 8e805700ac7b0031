from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import matplotlib  # noqa: F401  (selects the Agg backend)

_LOSS_KEYS = ("loss", "train_loss", "val_loss", "reg_loss")
_ACCURACY_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")


def plot_history(history: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Training curves: losses on the left, accuracies on the right, one point per epoch."""
    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for keys, ax, label in ((_LOSS_KEYS, ax_loss, "loss"), (_ACCURACY_KEYS, ax_acc, "accuracy")):
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
