"""Figures from arrays. Every function returns a matplotlib Figure and never opens a window:
the Agg backend is selected here, before pyplot is imported anywhere in mnistlab."""

import matplotlib


def _chosen_backend() -> str | None:
    """The backend already asked for (MPLBACKEND, matplotlibrc, a notebook), or None. Resolving
    matplotlib's automatic choice would import pyplot, which costs more than the rest of matplotlib."""
    try:
        return matplotlib.get_backend(auto_select=False)  # matplotlib >= 3.10
    except TypeError:
        return matplotlib.get_backend()


if (_chosen_backend() or "").lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")
