"""A study read back: the table of trials (best first), the best trial's test accuracy measured
once after the sweep, and figures. Shared by `mnistlab sweep show` and the web page."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError

BEST_TEST = "best_test"  # study attribute: {"trial", "run", "test_accuracy"}, measured once per best trial
FIGURES = ("history", "params", "importances")


def load_study(name: str, storage: Any) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = optuna.get_all_study_names(storage)
        hint = f"studies there: {', '.join(known)}" if known else "it holds no studies yet"
        raise ConfigError(f"no study named {name!r} in this storage; {hint}") from None


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: complete ones by validation accuracy (best first), then pruned ones by
    their last reported accuracy, then the rest by number."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.user_attrs.get("surplus"):
            state = "surplus"
        value = t.value if t.value is not None else t.user_attrs.get("val_accuracy")
        retried = t.system_attrs.get("failed_trial")
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "params": dict(t.params),
                "val_accuracy": value,
                "epochs": t.user_attrs.get("epochs"),
                "seconds": t.user_attrs.get("seconds"),
                "run": t.user_attrs.get("run") if state in ("complete", "pruned") else None,
                "host": t.user_attrs.get("host"),
                "retry_of": retried,
            }
        )
    rank = {"complete": 0, "pruned": 1}

    def key(row: dict[str, Any]) -> tuple:
        value = row["val_accuracy"]
        return (
            rank.get(row["state"], 2),
            -(value if value is not None and row["state"] in rank else 0),
            row["trial"],
        )

    return sorted(rows, key=key)


def table_text(rows: list[dict[str, Any]]) -> str:
    names = sorted({k for row in rows for k in row["params"]})
    header = ["trial", "state", *names, "val_acc", "epochs", "seconds"]
    lines = [header]
    for row in rows:
        value = row["val_accuracy"]
        lines.append(
            [
                str(row["trial"]),
                row["state"],
                *(_short(row["params"].get(n, "")) for n in names),
                f"{value:.4f}" if value is not None else "-",
                str(row["epochs"] or "-"),
                f"{row['seconds']:.1f}" if row["seconds"] is not None else "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_test_accuracy(
    study: Any, runs_dir: Path, load_dataset: Callable[[str], Any]
) -> dict[str, Any] | None:
    """The best complete trial's test accuracy: evaluated the first time it is asked for, then
    read back from the study, so the test set is looked at once per best trial and never by a
    trial. None while no trial is complete."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    cached = study.user_attrs.get(BEST_TEST)
    if isinstance(cached, dict) and cached.get("trial") == best.number:
        return cached
    run = best.user_attrs.get("run")
    run_dir = Path(runs_dir) / run if run else None
    if run_dir is None or not (run_dir / "run.json").is_file():
        host = best.user_attrs.get("host", "another machine")
        raise RunError(
            f"the best trial's run {run_dir} is not here (it ran on {host}); run `mnistlab sweep show` "
            "there, or copy the run into --runs"
        )
    from ..models import load_model
    from ..runs import read_manifest

    dataset = load_dataset(read_manifest(run_dir).get("dataset", "mnist"))
    predicted = load_model(run_dir).predict(dataset.test_images)
    accuracy = float((predicted == dataset.test_labels).mean())
    result = {
        "trial": best.number,
        "run": run,
        "val_accuracy": best.value,
        "test_accuracy": accuracy,
        "test_images": len(dataset.test_labels),
    }
    study.set_user_attr(BEST_TEST, result)
    return result


def write_figures(study: Any, out_dir: Path) -> dict[str, Path | str]:
    """PNG figures: the best value over trials, accuracy against each parameter, parameter
    importances. A figure that cannot be drawn yet (too few trials) maps to the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, Path | str] = {}
    makers = {
        "history": ovm.plot_optimization_history,
        "params": ovm.plot_slice,
        "importances": ovm.plot_param_importances,
    }
    needed = {"history": 1, "params": 1, "importances": 2}
    for name, make in makers.items():
        if len(complete) < needed[name]:
            out[name] = f"needs {needed[name]} complete trial(s)"
            continue
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                drawn = make(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of a single-valued parameter
            out[name] = f"not drawn: {exc}"
            continue
        first = drawn.flat[0] if hasattr(drawn, "flat") else drawn
        fig = first.figure
        path = Path(out_dir) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        out[name] = path
        plt.close(fig)
    return out
