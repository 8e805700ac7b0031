"""Real refusals from a real filesystem: a small tmpfs mounted as --out (full, then read-only) and as
the data cache. Mounting needs root; elsewhere these tests are skipped with the reason."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.data import load_dataset
from mnistlab.runs import load_npz, read_manifest, read_run

SPEC = "conv:4:3,pool:2,flatten,dense:16,output:10"  # about 44 KB of weights: a few epochs fill 600 KB


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs; yields a function remount(options) and the mount point."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (run the suite as root to test a really full disk)")
    where = tmp_path / "disk"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {proc.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)

    try:
        yield where, remount
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def argv(out: Path, epochs: int = 12) -> list[str]:
    options = ("--batch-size 60 --optimizer adam --amp off --channels-last off --threads 1 --seed 2 "
               "--no-progress")
    return ["train", "cnn", "--spec", SPEC, "--epochs", str(epochs), *options.split(), "--out", str(out)]


def test_train_cnn_on_a_full_disk_keeps_the_last_epoch_and_resumes(
    tmp_path, synthetic_dataset, small_disk, capsys
):
    pytest.importorskip("torch").set_num_threads(1)
    directory, _ = synthetic_dataset
    load_dataset("mnist", data_dir=directory)  # cached outside the small disk
    disk, remount = small_disk
    reference = tmp_path / "reference"
    assert main(argv(reference)) == 0
    run = disk / "run"
    capsys.readouterr()
    assert main(argv(run)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith(f"mnistlab: error: {run}: no space left on the device while writing the run; "), (
        err
    )
    assert [x for x in err if "error" in x] == [line]
    epoch = read_manifest(run)["epochs_done"]
    assert 1 <= epoch < 12, "the disk filled up in the middle of training"
    kept = f"the last complete checkpoint, epoch {epoch}, is intact in {run}"
    assert f"{kept}; free some space, then resume with: mnistlab train cnn --resume {run}" in line
    assert sorted(p.name for p in disk.iterdir()) == ["run"]  # nothing half-written beside it
    read_run(run)
    for key, value in load_npz(run / "weights.npz").items():
        np.testing.assert_array_equal(
            value, load_npz(reference / "checkpoints" / f"epoch-{epoch:03d}.npz")[key]
        )
    remount("size=4m")
    assert main(["train", "cnn", "--resume", str(run), "--no-progress"]) == 0
    for key, value in load_npz(run / "weights.npz").items():
        np.testing.assert_array_equal(value, load_npz(reference / "weights.npz")[key], err_msg=key)


def test_read_only_out_and_full_cache_are_one_line(
    tmp_path, synthetic_dataset, small_disk, capsys, monkeypatch
):
    pytest.importorskip("torch").set_num_threads(1)
    directory, _ = synthetic_dataset
    disk, remount = small_disk
    remount("size=64k")  # smaller than the dataset's cache file
    monkeypatch.setenv("MNISTLAB_HOME", str(disk))
    capsys.readouterr()
    assert main(["data", "fetch", "--data-dir", str(directory)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"mnistlab: error: {disk}/datasets/mnist.npz: no space left on the device while writing "
        "the dataset cache; nothing was cached; free some space or use MNISTLAB_HOME="
    ), line
    assert [p.name for p in (disk / "datasets").iterdir()] == []
    monkeypatch.setenv("MNISTLAB_HOME", str(tmp_path / "home"))
    remount("ro")
    assert main([*argv(disk / "run", epochs=1), "--data-dir", str(directory)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"mnistlab: error: {disk / 'run'}: read-only file system while writing the run; nothing was saved "
        f"in {disk / 'run'}; remount it read-write or use another --out"
    )
