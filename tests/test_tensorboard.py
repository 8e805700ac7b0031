"""--tensorboard: the event files read back with TensorBoard's own reader and served by a real server."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from mnistlab.cli import main  # noqa: E402
from mnistlab.runs import load_npz, read_history  # noqa: E402

# Trains the MLP through the CLI in a process where `import torch` fails: the NumPy path must log without it.
_MLP_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import numpy as np
import mnistlab.data
from mnistlab.cli import main
from mnistlab.data import Dataset

rng = np.random.default_rng(0)
def split(n):
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k : 5 + 2 * k, 4:24] = 255
    return images, labels
(tr, trl), (te, tel) = split(300), split(100)
ds = Dataset("synthetic", tr, trl, te, tel, tuple(str(d) for d in range(10)))
mnistlab.data.load_dataset = lambda name, **_: ds
code = main(sys.argv[1:])
assert "torch" not in sys.modules or sys.modules["torch"] is None
sys.exit(code)
"""


def _events(logdir):
    acc = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    acc.Reload()
    return acc


def _check_scalars(acc, history):
    tags = acc.Tags()["scalars"]
    for key in ("loss", "train_accuracy", "test_accuracy", "lr", "seconds", "train_seconds"):
        tag = ("engine/" if key == "train_seconds" else "history/") + key
        assert tag in tags, f"{tag} missing from {tags}"
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [row["epoch"] for row in history]
        np.testing.assert_allclose([e.value for e in events], [row[key] for row in history], rtol=1e-6)


def _check_histogram(acc, tag, values, step):
    (event,) = [e for e in acc.Histograms(tag) if e.step == step]
    h = event.histogram_value
    values = np.asarray(values, np.float64)
    assert h.num == values.size
    assert h.min == pytest.approx(values.min(), abs=1e-6) and h.max == pytest.approx(values.max(), abs=1e-6)
    assert h.sum == pytest.approx(values.sum(), rel=1e-5, abs=1e-5)


def _image(acc, tag, step):
    from PIL import Image

    (event,) = [e for e in acc.Images(tag) if e.step == step]
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


@pytest.fixture(scope="module")
def mlp_logs(tmp_path_factory):
    """(run directory, TensorBoard DIR) of a small MLP trained by the CLI where torch cannot be imported."""
    tmp = tmp_path_factory.mktemp("mlp-tensorboard")
    out, tb = tmp / "runs" / "mlp", tmp / "tb"
    argv = ["train", "mlp", "--layers", "16,12", "--epochs", "2", "--batch-size", "50", "--threads", "1",
            "--out", str(out), "--tensorboard", str(tb), "--no-progress"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _MLP_WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return out, tb


@pytest.mark.slow
def test_mlp_logs_without_torch(mlp_logs):
    out, tb = mlp_logs
    history = read_history(out)
    acc = _events(tb / "mlp")
    _check_scalars(acc, history)

    from mnistlab.models import load_model

    model = load_model(out)  # the saved weights are the last epoch's (no early stopping)
    last = history[-1]["epoch"]
    for name, values in load_npz(out / "weights.npz").items():
        _check_histogram(acc, f"weights/{name}", values, last)
    probe = _synthetic_test_images_of_the_script()
    for name, values in model.activations(probe).items():
        _check_histogram(acc, f"activations/{name}", values, last)
    assert {"confusion_matrix", "oip/hidden1"} <= set(acc.Tags()["images"])
    assert not [t for t in acc.Tags()["images"] if t.startswith("activation_grid/")]  # no conv layers


def _synthetic_test_images_of_the_script():
    namespace: dict = {}
    setup = _MLP_WITHOUT_TORCH.split("ds = Dataset")[0].replace('sys.modules["torch"] = None', "")
    exec(setup, namespace)
    return namespace["te"][:256]


@pytest.mark.slow
def test_cnn_logs_history_weights_activations_and_grids(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import mnistlab.data
    from mnistlab.models import load_model
    from mnistlab.tensorboard_log import grid_image
    from test_cnn_train import TINY, synthetic

    ds = synthetic(n_train=256, n_test=300)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda name, **_: ds)
    out, tb = tmp_path / "runs" / "cnn", tmp_path / "tb"
    argv = [
        "train",
        "cnn",
        "--spec",
        TINY,
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--amp",
        "off",
        "--out",
        str(out),
        "--tensorboard",
        str(tb),
        "--no-progress",
    ]
    assert main(argv) == 0
    history = read_history(out)
    acc = _events(tb / "cnn")
    _check_scalars(acc, history)
    model, last = load_model(out), history[-1]["epoch"]
    for name, values in load_npz(out / "weights.npz").items():
        _check_histogram(acc, f"weights/{name}", values, last)
    acts = model.activations(ds.test_images[:256])
    assert {f"activations/{n}" for n in model.layer_names()} <= set(acc.Tags()["histograms"])
    for name, values in acts.items():
        _check_histogram(acc, f"activations/{name}", values, last)
    grids = [t for t in acc.Tags()["images"] if t.startswith("activation_grid/")]
    assert grids == ["activation_grid/conv1", "activation_grid/conv2"]
    for tag in grids:
        maps = model.activations(ds.test_images[:1], [tag.split("/")[1]])[tag.split("/")[1]][0]
        shown = _image(acc, tag, last).astype(np.float64)
        shown = shown if shown.ndim == 2 else shown[..., 0]
        np.testing.assert_allclose(shown / 255, grid_image(maps), atol=1.5 / 255)
        assert [e.step for e in acc.Images(tag)] == [1, 2]
    assert {"confusion_matrix", "oip/conv2"} <= set(acc.Tags()["images"])


def test_bad_tensorboard_path_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for engine in ("mlp", "cnn"):
        out = tmp_path / engine
        assert (
            main(["train", engine, "--out", str(out), "--tensorboard", str(blocker / "tb"), "--no-progress"])
            == 1
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--tensorboard" in err and str(blocker) in err, err
        assert not out.exists()


def _served_port(server: subprocess.Popen, deadline: float) -> tuple[int | None, str]:
    """The port TensorBoard says it serves on (started with --port 0: the OS picks a free one, so no
    other process can take it first), and what it printed; None if it ended or said nothing in time."""
    lines: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        for line in server.stderr:
            lines.put(line)
        lines.put(None)  # it ended

    threading.Thread(target=read, daemon=True).start()
    printed = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        printed += line
        served = re.search(r" at http://[^/]+:(\d+)/", line)
        if served:
            return int(served.group(1)), printed
    return None, printed


def test_tensorboard_on_a_port_in_use_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")

    def exec_tensorboard(*args):  # were the check missing, pytest itself would become TensorBoard
        raise AssertionError(f"TensorBoard started on a port in use: {args}")

    monkeypatch.setattr(os, "execv", exec_tensorboard)
    with socket.socket() as busy:  # an earlier TensorBoard still running, say
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["tensorboard", str(tmp_path), "--port", str(port)]) == 1  # returns: nothing exec'd
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    assert f"127.0.0.1:{port} is in use" in err and "another --port" in err


@pytest.mark.slow
def test_tensorboard_server_serves_the_scalars(mlp_logs):
    out, tb = mlp_logs
    history = read_history(out)
    server = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "tensorboard", str(tb), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        port, printed = _served_port(server, deadline)
        assert port is not None, printed[-2000:]
        query = urllib.parse.urlencode({"run": "mlp", "tag": "history/loss"})
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
        rows = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    rows = json.loads(answer.read())
                if rows:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert server.poll() is None, printed[-2000:]
        assert rows, "no scalars served within 90 s"
        assert [r[1] for r in rows] == [row["epoch"] for row in history]
        np.testing.assert_allclose([r[2] for r in rows], [row["loss"] for row in history], rtol=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with socket.socket() as probe:  # stopping the command stops TensorBoard: nothing left serving
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "TensorBoard outlived `mnistlab tensorboard`"


@pytest.mark.slow
def test_sweep_trials_log_with_validation_images_standing_in_for_test(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from mnistlab.data import Dataset
    from test_sweep_inprocess import Untouchable, learnable

    images, labels = learnable(600, 0)
    ds = Dataset("mnist", images, labels, Untouchable("images"), Untouchable("labels"), tuple("0123456789"))
    monkeypatch.setattr("mnistlab.cli.sweep_cmd.load_dataset_from_args", lambda args: ds)
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "mlp", "--study", "s", "--trials", "2", "--val", "100", "--epochs", "2",
            "--layers", "16",
            "--batch-size", "50", "--space", "lr=log:0.05:0.5", "--heartbeat", "1", "--threads", "1",
            "--no-prune", "--tensorboard", str(tmp_path / "tb")]  # fmt: skip
    assert main(argv) == 0
    for trial in ("trial-0000", "trial-0001"):
        history = read_history(tmp_path / "runs" / "sweeps" / "s" / trial)
        acc = _events(tmp_path / "tb" / "s" / trial)
        events = acc.Scalars("history/val_accuracy")
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [r["val_accuracy"] for r in history], rtol=1e-6)
        assert "history/test_accuracy" not in acc.Tags()["scalars"]
        assert {"confusion_matrix", "oip/hidden1", "weights/W1"} <= set(acc.Tags()["images"]) | set(
            acc.Tags()["histograms"]
        )


def test_sweep_refuses_an_unwritable_tensorboard_path_before_the_data_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(
        "mnistlab.cli.sweep_cmd.load_dataset_from_args", lambda args: pytest.fail("the data was loaded")
    )
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "mlp", "--study", "s", "--trials", "1", "--tensorboard", str(blocker / "tb")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tensorboard" in err, err
