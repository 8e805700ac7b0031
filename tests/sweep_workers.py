"""Helpers for the tests that run `mnistlab sweep` as real worker processes on the real MNIST."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from mnistlab.sweep.study import open_storage

# A small MLP on a subset: a trial takes a second or two, long enough to be killed in the middle
# (6,000 images made a trial 0.3 s on a fast CPU, too short for the tests to catch it running).
EPOCHS = 10
TINY = [
    "--train-size",
    "24000",
    "--val",
    "1000",
    "--epochs",
    str(EPOCHS),
    "--layers",
    "64",
    "--batch-size",
    "100",
    "--space",
    "lr=log:0.05:1 activation=choice:relu,tanh",
    "--threads",
    "1",
    "--no-prune",
    "--heartbeat",
    "1",
]


def start_worker(study: str, trials: int, runs: Path, storage: str, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "mnistlab",
        "sweep",
        "mlp",
        "--study",
        study,
        "--trials",
        str(trials),
        "--runs",
        str(runs),
        "--storage",
        storage,
        *TINY,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MNISTLAB_HOME", None)  # the real MNIST cache
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_for_running_trial(study_name: str, storage: str, pid: int, timeout: float = 120) -> int:
    """The number of a trial that worker ``pid`` is running, in its first epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except Exception:  # noqa: BLE001  (no database file or no study yet: the worker is starting)
            time.sleep(0.2)
            continue
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("pid") == pid and 0 < len(t.intermediate_values) <= EPOCHS // 3:
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} never ran a trial")


def load(study_name: str, storage: str) -> optuna.Study:
    """The study as the workers see it (their URL handling: postgresql:// goes through psycopg 3)."""
    return optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat=None))


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"worker did not finish:\n{log.read_text()}") from None
    return log.read_text()


def check_complete_study(study_name: str, storage: str, runs: Path, trials: int) -> list:
    """The study holds exactly ``trials`` complete trials, each with a complete run directory."""
    from mnistlab.runs import read_history, read_manifest

    study = load(study_name, storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, [(t.number, t.state.name) for t in study.trials]
    assert not [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    for t in complete:
        run = runs / t.user_attrs["run"]
        assert run.name == f"trial-{t.number:04d}"
        manifest = read_manifest(run)
        assert manifest["status"] == "complete" and manifest["metrics"]["epochs_trained"] == EPOCHS
        history = read_history(run)
        assert len(history) == EPOCHS and history[-1]["val_accuracy"] == t.value
        assert {p.name for p in run.iterdir()} >= {
            "run.json",
            "weights.npz",
            "preprocess.npz",
            "history.json",
            "sweep.json",
        }
    return study.trials
