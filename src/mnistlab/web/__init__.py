"""The local web page (`mnistlab serve`): draw a digit and watch every layer of your own runs react.

``create_app(runs_dir)`` builds the FastAPI app; fastapi and uvicorn come with the ``web`` extra.
"""

from __future__ import annotations


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - keeps `import mnistlab.web` free of fastapi
    from ..extras import needs_extras

    with needs_extras("the web page (mnistlab.web)"):
        from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
