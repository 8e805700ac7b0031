"""How runs, models and results show themselves in Jupyter: the HTML behind their ``_repr_html_``.

A training result or a run read back shows a table of what it is (engine, data, epochs, accuracy,
where it is saved) and its training curves; a model shows its layers with their shapes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .inspect.report import _img, _table

_CONFIG_SHOWN = 14  # config entries in a run's table; the rest are in run.json


def _fact_rows(facts: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"": key, "value": value} for key, value in facts.items() if value is not None]


def run_html(
    title: str,
    facts: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
) -> str:
    """A summary table, the chosen settings (short ones only) and the loss and accuracy curves."""
    from .viz.curves import plot_history

    parts = [f"<h4>{html.escape(title)}</h4>", _table(_fact_rows(facts))]
    if config:
        short = [{"setting": k, "value": v} for k, v in config.items() if not isinstance(v, (dict, list))]
        parts.append(f"<details><summary>settings</summary>{_table(short[:_CONFIG_SHOWN])}</details>")
    if history:
        parts.append(_img(plot_history(list(history)), "loss and accuracy per epoch"))
    return "".join(parts)


def _last(history: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = [row[key] for row in history if row.get(key) is not None]
    return f"{values[-1]:.4f}" if values else None


def history_facts(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last epoch's numbers and the total time, in the history vocabulary (runs.HISTORY_KEYS)."""
    seconds = sum(float(row.get("seconds", 0.0)) for row in history)
    return {
        "epochs": len(history),
        "loss": _last(history, "loss"),
        "train accuracy": _last(history, "train_accuracy"),
        "val accuracy": _last(history, "val_accuracy"),
        "test accuracy": _last(history, "test_accuracy"),
        "seconds": f"{seconds:.1f}" if history else None,
    }


def training_html(
    kind: str,
    run_dir: Path | None,
    history: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    state: str | None = None,
) -> str:
    facts = {
        "engine": kind,
        "state": state,
        **history_facts(history),
        "saved in": str(run_dir) if run_dir else None,
    }
    return run_html(f"mnistlab {kind} training run", facts, history, config)


def record_html(record: Any) -> str:
    """A run directory read back (mnistlab.runs.RunRecord)."""
    m = record.manifest
    facts = {
        "engine": m.get("kind"),
        "dataset": m.get("dataset"),
        "created": m.get("created"),
        "state": m.get("state") or m.get("status"),
        **history_facts(record.history),
        "path": str(record.path),
    }
    return run_html(f"run {Path(record.path).name}", facts, record.history, m.get("config"))


def model_html(model: Any) -> str:
    """Each layer of an InspectableModel: its role and activation shape (one blank image through it)."""
    from .inspect.activations import layer_shapes

    shapes = layer_shapes(model)
    roles = model.layer_roles()
    rows = [
        {"layer": name, "role": roles.get(name, ""), "shape": " x ".join(map(str, shape))}
        for name, shape in shapes.items()
    ]
    title = repr(model) if type(model).__repr__ is not object.__repr__ else type(model).__name__
    summary = getattr(model, "summary", None)  # the CNN's Keras-style table, parameters included
    extra = (
        f"<details><summary>summary</summary><pre>{html.escape(summary())}</pre></details>"
        if callable(summary)
        else ""
    )
    return f"<h4>{html.escape(title)}</h4>" + _table(rows) + extra


class Table:
    """Rows (dicts, as the inspect results' ``table()`` methods return) shown as an HTML table in Jupyter."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
        self.rows, self.columns = [dict(r) for r in rows], columns

    def _repr_html_(self) -> str:
        return _table(self.rows, self.columns)

    def __repr__(self) -> str:
        return "\n".join(str(row) for row in self.rows)
