"""The Sweeps tab's endpoints: the studies of a sweep storage and each study's trials.

The storage is the one `mnistlab sweep` uses by default for this runs directory (RUNS/sweeps.db),
or the URL `mnistlab serve --storage` names. Each trial row carries its run's name, which the page
opens like any other run. Nothing here trains or reads a test set.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from ..errors import MnistlabError
from ..extras import needs_extras
from .store import ApiError


def sweep_router(runs_dir: Path, storage_url: str | None = None) -> APIRouter:
    router = APIRouter()
    opened: dict[str, Any] = {}
    lock = threading.Lock()

    def storage() -> tuple[str, Any] | None:
        url = storage_url
        if url is None:
            from ..sweep.study import default_database

            db = default_database(runs_dir)
            if not db.is_file():
                return None  # no sweep yet; opening would create an empty database
            url = f"sqlite:///{db.resolve()}"
        with lock:
            if url not in opened:
                try:
                    with needs_extras("sweeps"):
                        from ..sweep.study import open_storage

                        opened[url] = open_storage(url, heartbeat=None)
                except MnistlabError as exc:  # a missing extra included
                    raise ApiError(503, str(exc)) from None
            return url, opened[url]

    @router.get("/api/sweeps")
    def sweeps() -> dict[str, Any]:
        """The studies in the sweep storage, with their trial counts and best validation accuracy."""
        import optuna

        from ..sweep.study import counts, recipe_of, redact

        found = storage()
        if found is None:
            return {"storage": None, "studies": []}
        url, st = found
        studies = []
        for name in sorted(optuna.get_all_study_names(st)):
            study = optuna.load_study(study_name=name, storage=st)
            c = counts(study)
            best = study.best_value if c.get("complete") else None
            recipe = recipe_of(study)
            studies.append(
                {
                    "name": name,
                    "engine": recipe.get("engine"),
                    "wanted": recipe.get("trials"),
                    "counts": c,
                    "best_val_accuracy": best,
                }
            )
        return {"storage": redact(url), "studies": studies}

    @router.get("/api/sweep")
    def sweep(study: str) -> dict[str, Any]:
        """One study: its trials best first (state, parameters, validation accuracy, run name)."""
        from ..sweep.report import BEST_TEST, load_study, trial_rows
        from ..sweep.study import recipe_of

        found = storage()
        if found is None:
            raise ApiError(
                404, f"no sweeps in {runs_dir}; run `mnistlab sweep mlp --study NAME --trials N` first"
            )
        loaded = load_study(study, found[1])
        rows = trial_rows(loaded)
        for row in rows:  # a run trained on another machine is not here to open
            if row["run"] and not (Path(runs_dir) / row["run"] / "run.json").is_file():
                row["run"] = None
        recipe = recipe_of(loaded)
        return {
            "name": study,
            "engine": recipe.get("engine"),
            "space": recipe.get("space"),
            "wanted": recipe.get("trials"),
            "rows": rows,
            "best_test": loaded.user_attrs.get(BEST_TEST),
        }

    return router
