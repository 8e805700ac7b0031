"""A refused write (full disk, no permission) is one line that names the path and what was kept, and
nothing is lost: for each command, the k-th write fails for every k of a short run (ENOSPC and EACCES);
afterwards the run loads as its last complete epoch (or says it is incomplete) and `--resume`, or
running the command again, ends where an undisturbed run ends. The real-disk tests are in
tests/test_disk_full.py.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnistlab import safe_write
from mnistlab.cli import main
from mnistlab.data import load_dataset
from mnistlab.errors import RunError
from mnistlab.runs import load_npz, read_manifest, read_run

KERAS_FILE = Path(__file__).resolve().parent / "fixtures" / "keras" / "dense_mlp.keras"
TINY_CNN = "conv:4:3,pool:2,flatten,dense:8,output:10"
ERRNOS = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES}


class FailAt:
    """Stands in for safe_write.fault_point: counts the calls and makes call ``k`` (1-based) raise."""

    def __init__(self, k: int | None, code: int = errno.ENOSPC):
        self.k, self.code, self.calls, self.steps = k, code, 0, []

    def __call__(self, step: str, path: Path) -> None:
        self.calls += 1
        self.steps.append(step)
        if self.calls == self.k:
            raise OSError(self.code, os.strerror(self.code), str(path))


def run_cli(argv: list[str], capsys, monkeypatch, fault: FailAt | None = None) -> tuple[int, list[str]]:
    capsys.readouterr()
    with monkeypatch.context() as mp:
        if fault is not None:
            mp.setattr(safe_write, "fault_point", fault)
        code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code: int, err: list[str], *needles: str) -> str:
    assert code == 1, err
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and err[-1].startswith("mnistlab: error: "), err
    assert "internal error" not in err[-1] and "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1], err[-1]
    return err[-1]


def assert_nothing_half_written(parent: Path) -> None:
    """No temporary file or directory is left beside or inside what was written."""
    leftovers = [p for p in parent.rglob(".*")]
    assert not leftovers, leftovers


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_npz(a), load_npz(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """What reaches the platter after a power cut is not what these tests check; each rewrite's
    fsyncs made every short run here wait on the disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def small_mnist(synthetic_dataset, capsys):
    """The synthetic dataset registered as mnist, already cached (so the runs' writes are counted alone)."""
    directory, _ = synthetic_dataset
    load_dataset("mnist", data_dir=directory)
    return directory


def points(argv: list[str], capsys, monkeypatch) -> FailAt:
    counter = FailAt(None)
    code, err = run_cli(argv, capsys, monkeypatch, counter)
    assert code == 0, err
    return counter


# ---------------------------------------------------------------------------------------- CNN


def cnn_argv(out: Path, epochs: int = 2) -> list[str]:
    options = ("--batch-size 60 --optimizer adam --lr 0.003 --amp off --channels-last off --threads 1 "
               "--seed 1 --no-progress")
    return ["train", "cnn", "--spec", TINY_CNN, "--epochs", str(epochs), *options.split(), "--out", str(out)]


def check_cnn_run_after_fault(run: Path, reference: Path, line: str) -> int | None:
    """The run loads as one of the reference's complete epochs (returned), or there is none (None)."""
    if not run.exists():
        assert f"nothing was saved in {run}" in line, line
        with pytest.raises(RunError, match="no such run directory"):
            read_run(run)
        return None
    manifest = read_manifest(run)
    epoch = manifest["epochs_done"]
    read_run(run)
    if epoch == 0:
        same_weights(run / "weights.npz", reference / "initial_weights.npz")
    else:
        same_weights(run / "weights.npz", reference / "checkpoints" / f"epoch-{epoch:03d}.npz")
    return epoch


@pytest.fixture
def cnn(small_mnist):
    """torch with one thread (pytest -n 2 on 2 cores), and the dataset cached."""
    pytest.importorskip("torch").set_num_threads(1)


@pytest.mark.parametrize("code_name", ERRNOS)
def test_train_cnn_every_write_fails_once_then_resume_finishes(tmp_path, cnn, capsys, monkeypatch, code_name):
    reference = tmp_path / "reference"
    n = points(cnn_argv(reference), capsys, monkeypatch).calls
    assert n >= 20  # three rewrites of a dozen files and renames each
    for k in range(1, n + 1):
        run = tmp_path / "faults" / f"k{k}"
        code, err = run_cli(cnn_argv(run), capsys, monkeypatch, FailAt(k, ERRNOS[code_name]))
        line = assert_one_error_line(code, err, str(run), "while writing the run")
        assert ("no space left on the device" if code_name == "ENOSPC" else "permission denied") in line
        assert_nothing_half_written(run.parent)
        epoch = check_cnn_run_after_fault(run, reference, line)
        if epoch is None:
            assert run_cli(cnn_argv(run), capsys, monkeypatch)[0] == 0
        else:
            assert f"the last complete checkpoint, epoch {epoch}, is intact in {run}" in line
            assert f"resume with: mnistlab train cnn --resume {run}" in line
            code, err = run_cli(["train", "cnn", "--resume", str(run), "--no-progress"], capsys, monkeypatch)
            assert code == 0, err
        assert read_manifest(run)["state"] == "complete"
        same_weights(run / "weights.npz", reference / "weights.npz")
    print(f"train cnn, {code_name}: {n} fault points, each one error line, each run finished by --resume")


@pytest.mark.parametrize("code_name", ERRNOS)
def test_resume_every_write_fails_once_then_resume_finishes(tmp_path, cnn, capsys, monkeypatch, code_name):
    """Extending a finished 1-epoch run to 2 epochs: a failed rewrite keeps epoch 1 and says so."""
    reference = tmp_path / "reference"
    assert run_cli(cnn_argv(reference), capsys, monkeypatch)[0] == 0
    first = tmp_path / "first"
    assert run_cli(cnn_argv(first, epochs=1), capsys, monkeypatch)[0] == 0
    extend = ["train", "cnn", "--resume", "{run}", "--epochs", "2", "--no-progress"]
    probe = tmp_path / "probe"
    shutil.copytree(first, probe)
    n = points([a.replace("{run}", str(probe)) for a in extend], capsys, monkeypatch).calls
    for k in range(1, n + 1):
        run = tmp_path / "faults" / f"k{k}"
        shutil.copytree(first, run)
        argv = [a.replace("{run}", str(run)) for a in extend]
        code, err = run_cli(argv, capsys, monkeypatch, FailAt(k, ERRNOS[code_name]))
        line = assert_one_error_line(code, err, str(run))
        assert_nothing_half_written(run.parent)
        assert check_cnn_run_after_fault(run, reference, line) == 1
        assert f"the last complete checkpoint, epoch 1, is intact in {run}; " in line
        assert line.endswith(f"then resume with: mnistlab train cnn --resume {run} --epochs 2"), line
        assert run_cli(argv, capsys, monkeypatch)[0] == 0
        same_weights(run / "weights.npz", reference / "weights.npz")
    print(
        f"train cnn --resume, {code_name}: {n} fault points, each one error line, each finished by --resume"
    )


# ---------------------------------------------------------------------------------------- MLP


def mlp_argv(out: Path) -> list[str]:
    options = "--layers 8 --epochs 2 --threads 1 --seed 1 --no-progress"
    return ["train", "mlp", *options.split(), "--out", str(out)]


@pytest.mark.parametrize("code_name", ERRNOS)
def test_train_mlp_every_write_fails_once(tmp_path, small_mnist, capsys, monkeypatch, code_name):
    """The MLP writes its run once, at the end: a refused write leaves no run (or the previous one,
    with --overwrite), never a partial one; training again gives the same run."""
    reference = tmp_path / "reference"
    n = points(mlp_argv(reference), capsys, monkeypatch).calls
    overwrite = [*mlp_argv(reference), "--overwrite"]
    n_over = points(overwrite, capsys, monkeypatch).calls  # one more: the previous run is moved aside first
    assert n_over == n + 1
    for k in range(1, n + 1):
        run = tmp_path / "faults" / f"k{k}"
        code, err = run_cli(mlp_argv(run), capsys, monkeypatch, FailAt(k, ERRNOS[code_name]))
        assert_one_error_line(code, err, str(run), f"nothing was saved in {run}")
        assert not run.exists()
        assert_nothing_half_written(run.parent)
        assert run_cli(mlp_argv(run), capsys, monkeypatch)[0] == 0
        same_weights(run / "weights.npz", reference / "weights.npz")
    run = tmp_path / "faults" / "k1"
    for k in range(1, n_over + 1):  # --overwrite over a finished run: a refused rewrite keeps it as it was
        argv = [*mlp_argv(run), "--overwrite"]
        code, err = run_cli(argv, capsys, monkeypatch, FailAt(k, ERRNOS[code_name]))
        assert_one_error_line(code, err, f"the previous run in {run} is intact")
        assert_nothing_half_written(run.parent)
        same_weights(run / "weights.npz", reference / "weights.npz")
    print(f"train mlp, {code_name}: {n + n_over} fault points (new run and --overwrite), each one error line")


# ------------------------------------------------------------------- report, figures, patterns, cache


@pytest.fixture
def mlp_run(tmp_path, small_mnist, capsys, monkeypatch) -> Path:
    run = tmp_path / "mlp"
    assert run_cli(mlp_argv(run), capsys, monkeypatch)[0] == 0
    return run


ANALYSIS = {
    "report": (["report", "{run}", "--oip-steps", "2", "--out", "{out}/report.html"], "the report"),
    "evaluate": (["evaluate", "{run}", "--out", "{out}/figures"], "the figure"),
    "oip": (["oip", "{run}", "--steps", "2", "--maps", "0-1", "--out", "{out}/oip.png"], None),
    "export": (["export", "{run}", "--out", "{out}/model.onnx"], "the ONNX file"),
    "import": (["import", "keras", str(KERAS_FILE), "--out", "{out}/imported"], "the run"),
}


@pytest.mark.parametrize("command", ANALYSIS)
def test_analysis_outputs_every_write_fails_once(tmp_path, mlp_run, capsys, monkeypatch, command):
    template, what = ANALYSIS[command]

    def argv(out: Path) -> list[str]:
        return [a.replace("{run}", str(mlp_run)).replace("{out}", str(out)) for a in template]

    # Drawing takes seconds and writes nothing itself: small stand-ins let every write point be tried.
    if command == "report":
        import mnistlab.inspect.report

        page = "<!DOCTYPE html><p>report</p>\n"
        monkeypatch.setattr(mnistlab.inspect.report, "build_report", lambda *a, **k: page)
    if command == "evaluate":
        import matplotlib.figure

        import mnistlab.viz.confusion
        import mnistlab.viz.curves

        def small(*args, **kwargs):
            return matplotlib.figure.Figure(figsize=(1, 1))

        monkeypatch.setattr(mnistlab.viz.confusion, "plot_confusion", small)
        monkeypatch.setattr(mnistlab.viz.curves, "plot_history", small)
    before = {p.name: p.read_bytes() for p in mlp_run.iterdir()}
    n = points(argv(tmp_path / "probe"), capsys, monkeypatch).calls
    assert n >= 2  # the output directory, then each file
    for code_name, code in ERRNOS.items():
        for k in range(1, n + 1):
            out = tmp_path / f"{command}-{code_name}-{k}"
            code_, err = run_cli(argv(out), capsys, monkeypatch, FailAt(k, code))
            line = assert_one_error_line(code_, err, str(out), "the run" if command != "oip" else "")
            assert what is None or f"while writing {what}" in line
            assert_nothing_half_written(out.parent)
            assert {p.name: p.read_bytes() for p in mlp_run.iterdir()} == before  # the run is untouched
    assert run_cli(argv(out), capsys, monkeypatch)[0] == 0  # and the command works once the disk does
    print(f"{command}: {2 * n} fault points (ENOSPC and EACCES), each one error line, the run unchanged")


def test_cache_write_fails_once_and_the_next_load_caches(tmp_path, synthetic_dataset, capsys, monkeypatch):
    from mnistlab.data.sources import cache_path

    directory, arrays = synthetic_dataset
    argv = ["data", "fetch", "--data-dir", str(directory), "--force"]
    cache = cache_path("mnist")
    n = points(argv, capsys, monkeypatch).calls
    assert n == 2  # the cache directory, then the file
    for code in ERRNOS.values():
        for k in range(1, n + 2):
            present = k == n + 1  # once more with a cache already there: it must stay as it was
            if not present:
                shutil.rmtree(cache.parent)
            had = cache.read_bytes() if present else None
            code_, err = run_cli(argv, capsys, monkeypatch, FailAt(k if not present else 1, code))
            line = assert_one_error_line(
                code_, err, str(cache), "while writing the dataset cache", "nothing was cached"
            )
            assert (cache.read_bytes() if cache.exists() else None) == had
            assert ("(the previous cache is intact)" in line) == present
            assert_nothing_half_written(cache.parent.parent)
            assert run_cli(argv, capsys, monkeypatch)[0] == 0
            assert load_dataset("mnist").train_images.tobytes() == arrays["train_images"].tobytes()
    print(f"data fetch: {2 * (n + 1)} fault points, each one error line, the cache whole or absent")


def test_unreadable_run_and_unknown_figure_type_are_one_line(tmp_path, mlp_run, capsys, monkeypatch):
    code, err = run_cli(["evaluate", str(mlp_run), "--out", str(tmp_path / "f.txt")], capsys, monkeypatch)
    assert code == 0  # a directory name: figures go inside it
    argv = ["data", "show", "--index", "0", "--out", str(tmp_path / "x.txt")]
    code, err = run_cli(argv, capsys, monkeypatch)
    assert_one_error_line(code, err, "matplotlib cannot write .txt figures; use .png, .svg or .pdf")
    (mlp_run / "history.json").unlink()
    (mlp_run / "history.json").mkdir()  # reading it fails the way an unreadable file does
    code, err = run_cli(["evaluate", str(mlp_run), "--out", str(tmp_path / "figs")], capsys, monkeypatch)
    assert_one_error_line(code, err, f"{mlp_run / 'history.json'}: cannot read it (Is a directory)")
