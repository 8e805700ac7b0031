"""Classification metrics shared by `evaluate`, the report and the web page."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def confused_pairs(cm: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """(true, predicted, count) for the largest off-diagonal cells, most confused first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    return [(int(i // cm.shape[1]), int(i % cm.shape[1]), int(off.flat[i])) for i in order if off.flat[i] > 0]


def confusion_text(cm: np.ndarray, class_names: list[str] | tuple[str, ...] | None = None) -> str:
    """The matrix as aligned text with row/column headers (rows true, columns predicted)."""
    n = cm.shape[0]
    names = [str(c)[:6] for c in (class_names or range(n))]
    width = max(max(len(s) for s in names), len(str(int(cm.max()))) if cm.size else 1) + 1
    lines = ["true\\pred".ljust(10) + "".join(s.rjust(width) for s in names)]
    for i in range(n):
        lines.append(names[i].ljust(10) + "".join(str(int(v)).rjust(width) for v in cm[i]))
    return "\n".join(lines)
