"""Figures from arrays. Every function returns a matplotlib Figure and never opens a window:
the Agg backend is selected here, before pyplot is imported anywhere in mnistlab."""

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")
