"""Training on small synthetic data: it learns, saves, reloads, resumes exactly, resets, stops on NaN."""

import json
import os
import re
import signal
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # pytest -n 2 on 2 cores: more threads per worker only oversubscribe

from mnistlab.cli import main  # noqa: E402
from mnistlab.cnn import Trainer, resolve_config, resume, train  # noqa: E402
from mnistlab.data import Dataset  # noqa: E402
from mnistlab.errors import ConfigError, RunError, TrainingDiverged  # noqa: E402
from mnistlab.models import load_model  # noqa: E402
from mnistlab.runs import load_npz, read_manifest  # noqa: E402

TINY = "conv:4:3,pool:2,conv:8:3,bn,pool:2,dropout:0.1,flatten,dense:16,output:10"


def synthetic(n_train=384, n_test=128, seed=0):
    """Ten classes, each a bright bar at its own place plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            r = 3 + 2 * int(k)
            images[i, r : r + 3, 4 + (k % 3) * 6 : 14 + (k % 3) * 6] = 255
        return images, labels

    tr, te = make(n_train), make(n_test)
    return Dataset("synthetic", tr[0], tr[1], te[0], te[1], tuple(str(d) for d in range(10)))


FAST = dict(spec=TINY, epochs=2, batch_size=32, lr=3e-3, amp="off", channels_last="off", optimizer="adam",
            augment=1, seed=3, preprocess="unit", init="default")


def test_training_learns_writes_and_reloads(tmp_path):
    ds = synthetic()
    result = train(ds, out=tmp_path / "run", progress=False, **FAST)
    assert result.state == "complete" and len(result.history) == 2
    assert result.history[-1]["test_accuracy"] > 0.6
    manifest = read_manifest(tmp_path / "run")
    assert manifest["kind"] == "cnn" and manifest["state"] == "complete" and manifest["epochs_done"] == 2
    assert manifest["config"]["spec"]["layers"][0] == {
        "type": "conv", "filters": 4, "kernel": 3, "stride": 1, "pad": "valid", "act": "relu",
    }
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch-001.npz",
        "epoch-002.npz",
    ]
    model = load_model(tmp_path / "run")
    assert model.kind == "cnn" and model.layer_names() == result.model.layer_names()
    np.testing.assert_allclose(
        model.predict_proba(ds.test_images), result.model.predict_proba(ds.test_images), atol=1e-6
    )
    acc = (model.predict(ds.test_images) == ds.test_labels).mean()
    assert acc == pytest.approx(result.history[-1]["test_accuracy"], abs=1e-9)
    for key in ("loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "train_seconds"):
        assert key in result.history[0]
    from mnistlab.runs import HISTORY_KEYS  # the vocabulary shared with the MLP (no val split here)

    assert set(HISTORY_KEYS) - {"val_accuracy"} <= set(result.history[0])


def _interrupt_at(step):
    def callback(trainer, global_step):
        if global_step == step:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal path: finish the step, save, return

    return callback


@pytest.mark.parametrize("stop_step", [5, 12])  # mid-epoch, and exactly at the end of epoch 1
def test_interrupt_and_resume_give_the_uninterrupted_result(tmp_path, stop_step):
    ds = synthetic()
    whole = train(ds, out=tmp_path / "whole", progress=False, **FAST)
    first = train(ds, out=tmp_path / "split", progress=False, step_callback=_interrupt_at(stop_step), **FAST)
    assert first.state == "interrupted"
    assert read_manifest(tmp_path / "split")["state"] == "interrupted"
    rest = resume(tmp_path / "split", ds, progress=False)
    assert rest.state == "complete"
    a, b = load_npz(tmp_path / "whole" / "weights.npz"), load_npz(tmp_path / "split" / "weights.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [h["test_accuracy"] for h in whole.history] == [h["test_accuracy"] for h in rest.history]
    assert [h["loss"] for h in whole.history] == pytest.approx([h["loss"] for h in rest.history], rel=1e-5)


def test_resume_refuses_a_different_spec_or_recipe_and_a_finished_run(tmp_path):
    ds = synthetic()
    train(ds, out=tmp_path / "r", progress=False, **{**FAST, "epochs": 1})
    with pytest.raises(ConfigError, match="different spec"):
        resume(tmp_path / "r", ds, spec="conv:4:3,flatten,output:10", progress=False)
    with pytest.raises(ConfigError, match="cannot change --lr"):
        resume(tmp_path / "r", ds, lr=0.5, epochs=2, progress=False)
    with pytest.raises(ConfigError, match="already trained 1 epochs"):
        resume(tmp_path / "r", ds, progress=False)
    extended = resume(tmp_path / "r", ds, epochs=2, progress=False)  # extending is allowed
    assert len(extended.history) == 2


def test_reset_restarts_from_the_saved_initial_weights(tmp_path):
    ds = synthetic()
    train(ds, out=tmp_path / "a", progress=False, **FAST)
    initial = load_npz(tmp_path / "a" / "initial_weights.npz")
    again = resume(tmp_path / "a", ds, reset=True, out=tmp_path / "b", progress=False)
    assert again.state == "complete"
    np.testing.assert_array_equal(load_npz(tmp_path / "a" / "weights.npz")["conv1.conv.weight"],
                                  load_npz(tmp_path / "b" / "weights.npz")["conv1.conv.weight"])
    # new settings from the same start: the seed's save_weights / load_weights comparison
    sgd = resume(tmp_path / "a", ds, reset=True, out=tmp_path / "c", optimizer="sgd", momentum=0.9, lr=0.05,
                 epochs=1, progress=False)
    assert len(sgd.history) == 1
    np.testing.assert_array_equal(load_npz(tmp_path / "c" / "initial_weights.npz")["dense1.linear.weight"],
                                  initial["dense1.linear.weight"])


def test_train_takes_a_dataset_name(tmp_path, synthetic_dataset, monkeypatch):
    """train("mnist", ...) once failed with AttributeError: 'str' object has no attribute 'train_images'."""
    directory, arrays = synthetic_dataset
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(directory))
    result = train("mnist", out=tmp_path / "named", progress=False, **{**FAST, "epochs": 1, "augment": 0})
    record = read_manifest(tmp_path / "named")
    assert result.state == "complete" and record["dataset"] == "mnist"
    assert len(result.history) == 1 and result.history[0]["test_accuracy"] is not None


def test_nan_loss_stops_and_keeps_the_last_good_epoch(tmp_path):
    ds = synthetic()
    with pytest.raises(TrainingDiverged, match="keeps the weights after epoch 1"):
        train(ds, out=tmp_path / "nan", progress=False, step_callback=_poison_after(13),
              **{**FAST, "epochs": 3})
    weights = load_npz(tmp_path / "nan" / "weights.npz")
    assert all(np.isfinite(w).all() for w in weights.values())
    np.testing.assert_array_equal(
        weights["conv1.conv.weight"],
        load_npz(tmp_path / "nan" / "checkpoints" / "epoch-001.npz")["conv1.conv.weight"],
    )


def _poison_after(step):
    def callback(trainer, global_step):
        if global_step == step:
            with torch.no_grad():
                trainer.net.dense1.linear.weight.fill_(float("nan"))

    return callback


def test_bad_configs():
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        if torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available (skipped on a CUDA machine)")
        Trainer(resolve_config(TINY, device="cuda"), synthetic(64, 16), "/nonexistent/x")
    with pytest.raises(ConfigError, match="--epochs 0"):
        resolve_config("seed", epochs=0)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        resolve_config("seed", optimizer="lbfgs")
    with pytest.raises(ConfigError, match="--preprocess unit"):
        resolve_config("seed", augment=2, preprocess="standard")
    with pytest.raises(ConfigError, match="output layer has 3 units"):
        Trainer(resolve_config("conv:4:3,flatten,output:3"), synthetic(64, 16), "/nonexistent/x")


def test_presets_bring_their_recipe_and_options_override_it():
    cfg = resolve_config("seed")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.init) == ("rmsprop", 1e-3, 64, 5, "glorot")
    assert resolve_config("best", epochs=3).epochs == 3 and resolve_config("best").schedule == "onecycle"


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def fake_mnist(monkeypatch):
    import mnistlab.data

    ds = synthetic()
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda name, **_: ds)
    return ds


def test_cli_train_summary_and_errors(tmp_path, fake_mnist, capsys):
    out = tmp_path / "cli"
    argv = [
        "train", "cnn", "--spec", TINY, "--epochs", "1", "--batch-size", "64", "--optimizer", "adam", "--lr",
        "0.003", "--schedule", "onecycle", "--weight-decay", "1e-4", "--amp", "off", "--out", str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert " after 1 epoch (" in capsys.readouterr().out
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv1" in text and "Total params" in text
    assert main(["summary", "--spec", "seed"]) == 0
    assert "Total params: 96,844" in capsys.readouterr().out
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["train", "cnn", "--resume", str(out), "--spec", "seed", "--epochs", "2", "--no-progress"]) == 1
    )
    assert "different spec" in capsys.readouterr().err
    assert main(["train", "cnn", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["epochs_done"] == 2
    # the training seconds of a resumed run include the earlier command's, so they are named as such
    assert re.search(r" after 2 epochs \([\d.]+ s training over the whole run, [\d.]+ s for this command\)",
                     capsys.readouterr().out)
    assert main(["train", "cnn", "--spec", "conv:8:3,flatten", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the last layer must be output" in err
    if not torch.cuda.is_available():
        assert main(["train", "cnn", "--spec", TINY, "--device", "cuda", "--out", str(tmp_path / "y")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CUDA is not available" in err
    assert main(["summary"]) == 1
    assert main(["summary", str(tmp_path / "nope")]) == 1
    assert main(["train", "cnn", "--reset", "--no-progress"]) == 1
    capsys.readouterr()
    # --reset without --out once replaced the trained run in place, unasked
    trained = (out / "weights.npz").read_bytes()
    reset = ["train", "cnn", "--resume", str(out), "--reset", "--optimizer", "sgd", "--no-progress"]
    assert main(reset) == 1
    err = capsys.readouterr().err
    assert err == (f"mnistlab: error: {out}: --reset in place would replace its 2 epochs of training; branch "
                   "with --out DIR, or add --overwrite to restart it in place\n")
    assert (out / "weights.npz").read_bytes() == trained
    assert main([*reset, "--out", str(tmp_path / "branch")]) == 0
    assert (out / "weights.npz").read_bytes() == trained
    assert main([*reset, "--overwrite"]) == 0
    assert read_manifest(out)["config"]["optimizer"] == "sgd"
    assert (out / "weights.npz").read_bytes() != trained
    with pytest.raises(RunError):
        resume(tmp_path / "nope", fake_mnist)


def test_run_restores_torch_thread_count(tmp_path):
    """torch's thread count is process-wide: a run with its batch split across threads (one torch
    thread per part) sets it only while it runs, so later work in the process keeps all its threads."""
    spec = "conv:4:3,pool:2,conv:8:3,pool:2,flatten,dense:16,output:10"
    cfg = resolve_config(
        threads=2, spec=spec, epochs=1, batch_size=48, lr=1e-3, amp="off", seed=5, preprocess="unit"
    )
    try:
        torch.set_num_threads(2)
        trainer = Trainer(cfg, synthetic(96, 48), tmp_path / "run", progress=False)
        assert trainer.levers.data_parallel == 2 and trainer.levers.step_threads == 1
        assert torch.get_num_threads() == 2
        trainer.run()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_batches_split_across_threads_train_like_one_batch(tmp_path):
    """With several CPU threads a spec without batch norm or dropout runs each batch as parts on
    parallel threads (see choose_levers); in float32 the summed part gradients are the whole
    batch's, so the weights after an epoch match the one-thread run to rounding, and summing in
    part order makes a repeated run identical bit for bit. Batch norm or dropout keep the plain path."""
    from mnistlab.cnn.model import state_to_numpy

    spec = "conv:4:3,pool:2,conv:8:3,pool:2,flatten,dense:16,output:10"
    ds = synthetic(288, 64)
    common = dict(spec=spec, epochs=1, batch_size=48, lr=1e-3, amp="off", seed=5, preprocess="unit")
    runs = []
    try:
        for threads in (1, 3, 3):
            trainer = Trainer(
                resolve_config(threads=threads, **common), ds, tmp_path / f"t{len(runs)}", progress=False
            )
            assert trainer.levers.data_parallel == threads  # 48 images: parts of 16
            trainer.run()
            runs.append((state_to_numpy(trainer.net), trainer.history[0]))
        assert not any(
            t.name.startswith("mnistlab-part") for t in threading.enumerate()
        )  # shut down after run()
        (single, h1), (split, h3), (again, _) = runs
        for key, value in single.items():
            np.testing.assert_allclose(split[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
            np.testing.assert_array_equal(again[key], split[key], err_msg=key)
        assert h3["loss"] == pytest.approx(h1["loss"], rel=1e-5)
        assert h3["train_accuracy"] == h1["train_accuracy"]
        plain = Trainer(
            resolve_config(threads=2, **dict(common, spec=TINY)), ds, tmp_path / "bn", progress=False
        )
        assert plain.levers.data_parallel == 1
    finally:
        torch.set_num_threads(1)
