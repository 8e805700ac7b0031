from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    cmap: str = "gray_r",
    cell_inches: float = 1.1,
    suptitle: str | None = None,
    vmin: float | None = 0,
    vmax: float | None = 255,
) -> Figure:
    """A grid of (N, H, W) images with optional titles, ``ncols`` per row (the last row may be short).

    Builds a Figure directly (not through pyplot) so no global state or window is involved.
    """
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    title_pad = 0.25 if titles is not None else 0.0
    fig = Figure(figsize=(ncols * cell_inches, nrows * (cell_inches + title_pad) + (0.4 if suptitle else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=8, pad=2)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
