"""SIGKILL at random moments of a CNN training run: the run directory always loads as one of its
complete epochs (or is not there yet), and resuming it ends at the weights of an undisturbed run.

The runs train in children of a forkserver that has imported torch once, so each of the 20 kills
costs a fork rather than a fresh interpreter; the kill itself is a real SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mnistlab.errors import RunError
from mnistlab.runs import load_npz, read_manifest, read_run, recover

torch = pytest.importorskip("torch")

from mnistlab.cnn import resume, train  # noqa: E402
from mnistlab.data import Dataset  # noqa: E402

KILLS = 20
CONFIG = dict(
    spec="conv:4:3,pool:2,flatten,dense:8,output:10",
    epochs=5,
    batch_size=40,
    optimizer="adam",
    lr=3e-3,
    amp="off",
    channels_last="off",  # a timed layout choice may differ between runs, and each rounds differently
    threads=1,
    seed=4,
    preprocess="unit",
    init="default",
)


def small_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    labels = np.arange(160, dtype=np.uint8) % 10
    images = rng.integers(0, 255, (160, 28, 28), dtype=np.uint8)
    return Dataset("synthetic", images[:120], labels[:120], images[120:], labels[120:], tuple("0123456789"))


def _train_child(out: str) -> None:
    torch.set_num_threads(1)
    train(small_dataset(), out=out, progress=False, **CONFIG)


def same_weights(path: Path, expected: Path) -> None:
    got, want = load_npz(path), load_npz(expected)
    assert got.keys() == want.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_sigkill_at_random_moments_then_resume_reaches_the_same_weights(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mnistlab.cnn.training"])
    warm = ctx.Process(target=time.sleep, args=(0,))  # boots the forkserver (and its torch import) untimed
    warm.start()
    warm.join(120)
    reference = tmp_path / "reference"
    start = time.perf_counter()
    child = ctx.Process(target=_train_child, args=(str(reference),))
    child.start()
    child.join(120)
    whole = time.perf_counter() - start
    assert child.exitcode == 0 and read_manifest(reference)["state"] == "complete"

    rng = np.random.default_rng(18)
    outcomes: dict[str, int] = {}
    for i, moment in enumerate(rng.uniform(0.0, whole, KILLS)):
        run = tmp_path / f"killed-{i}"
        child = ctx.Process(target=_train_child, args=(str(run),))
        child.start()
        time.sleep(moment)
        child.kill()
        child.join(30)
        try:
            manifest = read_manifest(run)
        except RunError as exc:  # killed before its first save
            assert "no such run directory" in str(exc) or "incomplete" in str(exc), exc
            assert not list(tmp_path.glob(f".{run.name}.*")), "a half-written run was left beside it"
            outcomes["nothing saved"] = outcomes.get("nothing saved", 0) + 1
            train(small_dataset(), out=run, progress=False, **CONFIG)
        else:
            read_run(run)
            epoch = manifest["epochs_done"]
            saved = reference / (
                "initial_weights.npz" if epoch == 0 else f"checkpoints/epoch-{epoch:03d}.npz"
            )
            same_weights(run / "weights.npz", saved)
            state = manifest["state"] if manifest["state"] == "complete" else f"epoch {epoch}"
            outcomes[state] = outcomes.get(state, 0) + 1
            if manifest["state"] != "complete":
                assert resume(run, small_dataset(), progress=False).state == "complete"
        same_weights(run / "weights.npz", reference / "weights.npz")
        assert not list(tmp_path.glob(f".{run.name}.*"))
    print(f"{KILLS} SIGKILLs over {whole:.2f} s runs: {outcomes}; each resumed to the undisturbed weights")


def test_a_run_killed_between_its_two_renames_is_put_back(tmp_path):
    """The one moment a rewrite has no run in place: the previous version was moved aside and the new
    one not yet renamed in. Readers and writers put the previous version back."""
    train(small_dataset(), out=tmp_path / "run", progress=False, **{**CONFIG, "epochs": 1})
    dead = subprocess.Popen(["true"])  # a process id that no longer runs
    dead.wait()
    aside = tmp_path / f".run.old-{dead.pid}"
    (tmp_path / "run").rename(aside)
    partial = tmp_path / f".run.partial-{dead.pid}-x1y2"
    partial.mkdir()
    (partial / "weights.npz").write_bytes(b"half")
    assert read_manifest(tmp_path / "run")["epochs_done"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    alive = tmp_path / f".run.partial-{os.getpid()}-busy"
    alive.mkdir()
    recover(tmp_path / "run")
    assert alive.exists(), "a live writer's temporary directory must be left alone"


def test_a_killed_writer_not_yet_reaped_counts_as_gone():
    """A zombie still has its process id; its leftovers are safe to clear (a forkserver child is reaped
    by the forkserver, after the parent saw it die)."""
    from mnistlab.safe_write import pid_alive

    child = subprocess.Popen(["sleep", "0"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is not None or not pid_alive(child.pid)
    assert not pid_alive(child.pid)  # exited but unreaped until poll(): a zombie
    running = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(running.pid)
    finally:
        running.kill()
        running.wait()
