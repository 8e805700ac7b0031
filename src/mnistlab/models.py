"""Load any run directory as an InspectableModel, whichever engine trained it."""

from __future__ import annotations

from pathlib import Path

from .extras import needs_extras
from .model_api import InspectableModel
from .runs import read_run


def load_model(run_dir: str | Path) -> InspectableModel:
    """Reload a trained model from its run directory (torch is imported only for CNN runs)."""
    record = read_run(Path(run_dir))
    if record.kind == "mlp":
        from .mlp import MLP

        return MLP.from_run(record)
    with needs_extras(f"the CNN run {run_dir}"):
        from .cnn import CNN

    return CNN.from_run(record)
