"""Sweeps run in this process on a small learnable dataset whose test split cannot be read:
the objective, pruning through both engines' epoch callbacks, the run directories, `sweep show`."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from mnistlab.cli import main
from mnistlab.data import Dataset
from mnistlab.models import load_model
from mnistlab.runs import read_history, read_manifest


class Untouchable:
    """Stands in for the test split: any use of it fails the test."""

    def __init__(self, what: str):
        self.what = what

    def _fail(self, *args, **kwargs):
        raise AssertionError(f"the sweep read the test {self.what}")

    __getattr__ = __getitem__ = __len__ = __iter__ = __array__ = __bool__ = _fail


def learnable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits whose class is the row of a bright band: a small net learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for k in range(10):
        images[labels == k, 2 * k + 4 : 2 * k + 7, 4:24] = 220
    return images, labels


@pytest.fixture
def no_test_split(monkeypatch):
    """`mnistlab sweep` loads this dataset; its test split raises on any use."""
    images, labels = learnable(1200, 0)
    ds = Dataset("mnist", images, labels, Untouchable("images"), Untouchable("labels"), tuple("0123456789"))
    monkeypatch.setattr("mnistlab.cli.sweep_cmd.load_dataset_from_args", lambda args: ds)
    return ds


def sweep(engine: str, study: str, trials: int, epochs: int, *options: str) -> list[str]:
    """`mnistlab sweep ENGINE`'s arguments as these tests give them: 200 validation images, one thread."""
    counts = ["--trials", str(trials), "--epochs", str(epochs), "--val", "200", "--threads", "1"]
    return ["sweep", engine, "--study", study, *counts, *options]


def study_of(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/sweeps.db")


@pytest.mark.slow  # several trainings, seconds each
def test_mlp_sweep_never_reads_the_test_split_and_prunes_a_hopeless_trial(
    tmp_path, no_test_split, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    # The sampler would choose too; queued values make the hopeless trial certain. The sweep adopts
    # a study that has no recipe yet, with its queue.
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    for lr in (0.3, 0.4, 0.35, 0.3, 1e-6):
        study.enqueue_trial({"lr": lr})
    args = sweep("mlp", "p", 5, 6, "--layers", "16", "--batch-size", "50", "--space", "lr=log:1e-6:1",
                 "--heartbeat", "1")
    assert main(args) == 0

    study = study_of(tmp_path, "p")
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE"] * 4 + ["PRUNED"]
    pruned = study.trials[4]
    assert pruned.user_attrs["epochs"] < 6 and max(pruned.intermediate_values.values()) < 0.5
    assert study.best_value > 0.9  # validation accuracy on the last 200 of the 1200 training images
    for t in study.trials:
        run = tmp_path / "runs" / t.user_attrs["run"]
        manifest = read_manifest(run)
        assert manifest["status"] == ("stopped" if t.number == 4 else "complete")
        assert manifest["metrics"]["test_accuracy"] is None
        history = read_history(run)
        assert len(history) == t.user_attrs["epochs"] and all("test_accuracy" not in row for row in history)
        assert [row["val_accuracy"] for row in history] == [
            t.intermediate_values[e] for e in range(1, len(history) + 1)
        ]
        assert json.loads((run / "sweep.json").read_text())["trial"] == t.number
        load_model(run)  # an ordinary run every command opens
    assert (
        study.trials[0].value
        == read_history(tmp_path / "runs" / study.trials[0].user_attrs["run"])[-1]["val_accuracy"]
    )


def test_a_worker_with_another_recipe_is_refused_in_one_line(tmp_path, no_test_split, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = sweep("mlp", "r", 1, 1, "--layers", "8", "--space", "lr=log:0.1:1")
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:-2], "--space", "lr=log:0.01:1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the line announcing the sweep
    assert err.startswith("mnistlab: error: study 'r' was started with another search space")
    assert main([*args, "--epochs", "2"]) == 1
    assert "fixed options (epochs: 1 there, 2 here)" in capsys.readouterr().err
    assert main([*args, "--lr", "0.5"]) == 1
    assert "lr: both fixed by an option and searched" in capsys.readouterr().err


@pytest.mark.slow  # several trainings, seconds each
def test_cnn_sweep_reports_each_epoch_and_never_reads_the_test_split(
    tmp_path, no_test_split, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = sweep(
        "cnn", "c", 2, 2, "--spec", "conv:4:3,pool:2,flatten,output:10", "--batch-size", "64", "--amp", "off",
        "--space", "lr=log:1e-3:1e-2 optimizer=choice:adam,rmsprop", "--no-prune",
    )
    assert main(args) == 0
    study = study_of(tmp_path, "c")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    for t in study.trials:
        run = tmp_path / "runs" / t.user_attrs["run"]
        manifest = read_manifest(run)
        assert manifest["state"] == "complete" and manifest["kind"] == "cnn"
        history = read_history(run)
        assert [row["val_accuracy"] for row in history] == [
            t.intermediate_values[1],
            t.intermediate_values[2],
        ]
        assert t.value == history[-1]["val_accuracy"] and all("test_accuracy" not in row for row in history)
        assert (
            manifest["config"]["optimizer"] == t.params["optimizer"]
            and manifest["config"]["lr"] == t.params["lr"]
        )
        load_model(run)


@pytest.mark.slow  # several trainings, seconds each
def test_show_prints_the_table_best_first_and_the_best_test_accuracy_once(tmp_path, monkeypatch, capsys):
    """`sweep show` is the one place the test split is read: once per best trial, labelled."""
    images, labels = learnable(1000, 0)
    test_images, test_labels = learnable(300, 1)
    ds = Dataset("mnist", images, labels, test_images, test_labels, tuple("0123456789"))
    monkeypatch.setattr("mnistlab.cli.sweep_cmd.load_dataset_from_args", lambda args: ds)
    loads = []
    monkeypatch.setattr("mnistlab.data.load_dataset", lambda name, **kw: loads.append(name) or ds)
    monkeypatch.chdir(tmp_path)
    assert main(sweep("mlp", "s", 3, 3, "--layers", "8", "--space", "lr=log:0.01:1", "--no-prune")) == 0
    capsys.readouterr()
    assert main(["sweep", "show", "s"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:5]]
    values = [float(r[3]) for r in rows]
    assert values == sorted(values, reverse=True) and all(r[1] == "complete" for r in rows)
    study = study_of(tmp_path, "s")
    best = study.best_trial
    model = load_model(tmp_path / "runs" / best.user_attrs["run"])
    expected = float((model.predict(test_images) == test_labels).mean())
    assert f"best trial {best.number}: validation accuracy {best.value:.4f}" in out
    assert f"TEST accuracy {expected:.4f} on 300 test images (evaluated once, after the sweep" in out
    assert loads == ["mnist"]
    for name in ("history", "params", "importances"):
        assert (tmp_path / "runs/sweeps/s/figures" / f"{name}.png").stat().st_size > 1000
    assert main(["sweep", "show", "s"]) == 0  # the second look reads the stored value, not the test set
    assert loads == ["mnist"]
    assert main(["sweep", "show", "nope"]) == 1
    assert "no study named 'nope' in this storage; studies there: s" in capsys.readouterr().err


def test_show_without_any_sweep_says_so_and_creates_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["sweep", "show", "s1", "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    assert f"no sweeps in {runs} ({runs}/sweeps.db does not exist)" in err and "mnistlab sweep mlp" in err
    assert not runs.exists()  # a look is not a write: no empty database left behind
