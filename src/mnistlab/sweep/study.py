"""A sweep worker: joins an Optuna study in a relational database and runs trials until the study
holds N finished ones, however many workers (processes, machines) share it.

Optuna's RDB storage does the distribution: each worker asks the database for its next trial;
a heartbeat marks the trials of a killed worker failed and a retry callback queues their
parameters again. Nothing here coordinates workers in any other way.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..callbacks import StopTraining
from ..data import Dataset
from ..errors import ConfigError, MnistlabError
from ..runs import atomic_write_json
from .engines import TrialRun
from .space import Dimension, Param, trial_values

PRUNERS = ("median", "hyperband")
HEARTBEAT_S = 10  # Optuna's heartbeat interval; a silent trial is failed after twice this
MAX_RETRY = 3
RECIPE = "recipe"  # the study attribute holding recipe_of(study)


def default_database(runs_dir: Path | str) -> Path:
    """The SQLite file of the sweeps run into ``runs_dir`` without a storage URL (RUNS/sweeps.db)."""
    return Path(runs_dir) / "sweeps.db"
SWEEP_FILE = "sweep.json"  # in each trial's run directory: which study and trial it belongs to


class SurplusTrial(Exception):
    """A trial asked for while other workers already run enough trials to reach the total."""


@dataclass
class Sweep:
    """Everything one worker needs; the same for every worker of a study."""

    study: str
    engine: Any  # an engine from mnistlab.sweep.engines
    space: list[Dimension]
    params: dict[str, Param]
    base: Any  # the engine's config with the fixed options
    dataset: Dataset  # training split only
    runs_dir: Path
    trials: int
    prune: bool = True
    pruner: str = "median"
    timeout: float | None = None
    threads: Any = "auto"
    tensorboard: Path | None = None  # each trial logs to tensorboard/STUDY/trial-NNNN
    say: Callable[[str], None] = field(default=lambda line: None)

    @property
    def trial_root(self) -> Path:
        return self.runs_dir / "sweeps" / self.study


def run_name(study: str, number: int) -> str:
    """A trial's run, relative to the runs directory."""
    return f"sweeps/{study}/trial-{number:04d}"


def open_storage(url: str, *, heartbeat: int | None = HEARTBEAT_S) -> Any:
    """Optuna's RDB storage for ``url``; one MnistlabError line when it is wrong or unreachable."""
    import optuna

    with warnings.catch_warnings():  # Optuna marks the heartbeat and its retry callback experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open_storage(url, heartbeat)


def _open_storage(url: str, heartbeat: int | None) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    shown = redact(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"storage {shown!r}: not a database URL; use sqlite:///PATH (one machine) or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB (several)"
        )
    kwargs: dict[str, Any] = {}
    if scheme == "postgresql":
        url = "postgresql+psycopg" + url[len("postgresql") :]  # psycopg 3 (SQLAlchemy's default is psycopg2)
    if scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MnistlabError(
                    f"storage {shown!r}: cannot create {Path(path).parent} ({exc.strerror})"
                ) from None
        # several worker processes share the file: wait for its lock instead of failing at once
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat else None
    attempt = 0
    while True:
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat if heartbeat else None,
                heartbeat_stale_trial_callback=retry,
            )
        except ModuleNotFoundError as exc:
            from ..extras import missing_extra, optional_module

            if optional_module(exc) is None:  # a driver the extras do not bring (mysql): name it
                raise ConfigError(f"storage {shown!r} needs the {exc.name} module; pip install it") from None
            raise missing_extra(exc.name, f"storage {shown!r}") from None
        except Exception as exc:  # noqa: BLE001  SQLAlchemy's errors: a bad URL, a refused connection, a bad password
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            attempt += 1
            if attempt < 5 and _creating_concurrently(reason):
                time.sleep(0.5 * attempt)  # another worker is creating the same tables right now
                continue
            raise MnistlabError(
                f"storage {shown!r}: cannot open it ({reason}); check the URL and that the "
                "database server is running and accepts this user"
            ) from None


def _creating_concurrently(reason: str) -> bool:
    return any(
        s in reason for s in ("UNIQUE constraint", "already exists", "duplicate key", "database is locked")
    )


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def load_or_create_study(sweep: Sweep, storage: Any) -> Any:
    """The study, created by the first worker; a later worker must bring the same engine, space
    and fixed options (else its trials would not be comparable)."""
    import optuna

    pruner = _pruner(sweep) if sweep.prune else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=sweep.study, storage=storage, direction="maximize", load_if_exists=True, pruner=pruner
    )
    recipe = {
        "engine": sweep.engine.name,
        "space": " ".join(d.term for d in sweep.space),
        "fixed": sweep.engine.recipe(sweep.base),
        "trials": sweep.trials,
    }
    stored = recipe_of(study)
    if not stored:
        study.set_user_attr(RECIPE, recipe)  # one attribute, so a worker never sees half of it
        return study
    for key, what in (("engine", "engine"), ("space", "search space"), ("fixed", "fixed options")):
        if stored.get(key) != recipe[key]:
            diff = _difference(stored.get(key), recipe[key])
            raise ConfigError(
                f"study {sweep.study!r} was started with another {what} ({diff}); rerun with the "
                "same options or start a new --study"
            )
    return study


def recipe_of(study: Any) -> dict[str, Any]:
    """What the study's first worker stored: engine, space, fixed options and the trials wanted."""
    recipe = study.user_attrs.get(RECIPE)
    return recipe if isinstance(recipe, dict) else {}


def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in keys[:3])
    return f"{old!r} there, {new!r} here"


def _pruner(sweep: Sweep) -> Any:
    import optuna

    if sweep.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {sweep.pruner!r}; choose one of: {', '.join(PRUNERS)}")
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep.engine.epochs(sweep.base))
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)


def counts(study: Any) -> dict[str, int]:
    """Trials of the study by state name (complete, pruned, fail, running, waiting)."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.state.name.lower()
        out[key] = out.get(key, 0) + 1
    return out


def finished(c: dict[str, int]) -> int:
    return c.get("complete", 0) + c.get("pruned", 0)


def run_worker(sweep: Sweep, storage: Any) -> Any:
    """Run trials until the study holds ``sweep.trials`` finished ones (or ``timeout`` passes).

    KeyboardInterrupt ends the current trial (marked failed, its parameters not retried) and
    propagates; rerunning continues the study.
    """
    import optuna

    study = load_or_create_study(sweep, storage)
    sweep.trial_root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    interval = storage.get_heartbeat_interval() or 1
    while True:
        if sweep.timeout is not None and time.monotonic() - started > sweep.timeout:
            sweep.say(f"--timeout {sweep.timeout:g} s reached; this worker stops")
            break
        with warnings.catch_warnings():  # experimental in Optuna; optimize() calls it the same way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(
                study
            )  # a killed worker's trial: failed, its parameters queued again
        c = counts(study)
        if finished(c) >= sweep.trials:
            break
        if finished(c) + c.get("running", 0) >= sweep.trials and not c.get("waiting"):
            time.sleep(interval)  # enough trials run elsewhere; one may still fail and come back queued
            continue
        try:
            study.optimize(lambda trial: _objective(sweep, study, trial), n_trials=1, catch=(SurplusTrial,))
        except MnistlabError as exc:
            raise MnistlabError(f"trial failed: {exc}") from None
    return study


def _objective(sweep: Sweep, study: Any, trial: Any) -> float:
    import optuna
    from optuna.trial import TrialState

    trial.set_user_attr("pid", os.getpid())  # which worker took it, a surplus trial included
    every = study.get_trials(deepcopy=False)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    before = [
        t for t in every if t.state in counted or (t.state == TrialState.RUNNING and t.number < trial.number)
    ]
    if len(before) >= sweep.trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: {sweep.trials} trials already finished or running")
    drawn = {d.name: d.suggest(trial) for d in sweep.space}
    values = trial_values(sweep.space, sweep.params, drawn)
    config = sweep.engine.configure(sweep.base, values)
    name = run_name(sweep.study, trial.number)
    trial.set_user_attr("run", name)
    trial.set_user_attr("host", socket.gethostname())
    last_epoch = sweep.engine.epochs(config)
    pruned_at: list[int] = []
    accuracies: list[float] = []

    def on_epoch(row: dict[str, Any]) -> None:
        accuracies.append(row["val_accuracy"])
        trial.report(row["val_accuracy"], row["epoch"])
        if sweep.prune and row["epoch"] < last_epoch and trial.should_prune():
            pruned_at.append(row["epoch"])
            raise StopTraining

    t0 = time.perf_counter()
    this = next((t for t in every if t.number == trial.number), None)
    retried = this.system_attrs.get("failed_trial") if this is not None else None
    sweep.say(
        f"trial {trial.number} started{f' (retry of trial {retried})' if retried is not None else ''}: "
        + " ".join(f"{k}={v}" for k, v in drawn.items())
    )
    logs = None if sweep.tensorboard is None else sweep.tensorboard / Path(name).relative_to("sweeps")
    result: TrialRun = sweep.engine.train(
        config, sweep.dataset, sweep.runs_dir / name, on_epoch, sweep.threads, tensorboard=logs
    )
    seconds = time.perf_counter() - t0
    if result.status == "interrupted" and not pruned_at:
        raise KeyboardInterrupt  # the CNN trainer caught Ctrl-C and saved its run
    trial.set_user_attr("epochs", len(accuracies))
    trial.set_user_attr("seconds", round(seconds, 2))
    trial.set_user_attr("status", "pruned" if pruned_at else result.status)
    if result.run_dir is not None:
        atomic_write_json(
            result.run_dir / SWEEP_FILE,
            {"study": sweep.study, "trial": trial.number, "params": drawn, "objective": "val_accuracy"},
        )
    if pruned_at:
        trial.set_user_attr("val_accuracy", accuracies[-1])
        sweep.say(
            f"trial {trial.number} pruned after epoch {pruned_at[0]}: val accuracy {accuracies[-1]:.4f}"
        )
        raise optuna.TrialPruned(f"after epoch {pruned_at[0]}")
    value = (max(accuracies) if getattr(config, "patience", None) else accuracies[-1]) if accuracies else 0.0
    sweep.say(
        f"trial {trial.number} {result.status}: val accuracy {value:.4f} after {len(accuracies)} epochs "
        f"({seconds:.1f} s)"
    )
    return value
