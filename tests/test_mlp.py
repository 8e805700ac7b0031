"""The NumPy MLP without torch: finite differences, worked examples of the update arithmetic,
the inspection interface, run directories, the CLI and one-line errors on bad input. The BLAS
thread count: test_mlp_threads.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.data import Dataset
from mnistlab.errors import ConfigError, DataError, RunError, TrainingDiverged
from mnistlab.mlp import MLP, MLPConfig, Trainer, learning_rate, preset, train
from mnistlab.mlp.backprop import SHARED_SHIFT_RANGE
from mnistlab.models import load_model


def _toy(n=40, d=12, classes=4, seed=0):
    """Separable-ish synthetic data: class = argmax of a fixed projection."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = (x @ rng.standard_normal((d, classes))).argmax(axis=1)
    return x, y


# ----- gradients by finite differences (float64) -----


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_gradients_match_finite_differences_float64(activation, output):
    cfg = MLPConfig(input_size=12, hidden=(6, 5), n_classes=4, activation=activation, output=output,
                    l1=0.003, l2=0.01, dtype="float64", seed=1)
    model = MLP(cfg)
    model.params[model.n_weights :] = np.random.default_rng(2).normal(
        0, 0.2, len(model.params) - model.n_weights
    )
    x, y = _toy(9)
    trainer = Trainer(model)
    _, _, grads = trainer.loss_and_gradients(x, y)
    flat = np.concatenate([grads[f"W{i}"].ravel() for i in (1, 2, 3)] + [grads[f"b{i}"] for i in (1, 2, 3)])

    def total():
        cost, reg, _ = trainer.loss_and_gradients(x, y)
        return cost + reg

    eps = 1e-6
    rng = np.random.default_rng(3)
    for k in rng.choice(len(model.params), 40, replace=False):
        old = model.params[k]
        model.params[k] = old + eps
        up = total()
        model.params[k] = old - eps
        down = total()
        model.params[k] = old
        assert (up - down) / (2 * eps) == pytest.approx(flat[k], rel=1e-5, abs=1e-8), k


# ----- the arithmetic of the update on worked examples -----


def _one_weight_fit(**opts):
    """A 1-1-2 net (W1 1x1, W2 1x2, b1, b2): four params a worked example can follow."""
    cfg = MLPConfig(input_size=1, hidden=(1,), n_classes=2, dtype="float64", **opts)
    model = MLP(cfg)
    model.params[:] = [0.5, -2.0, 1.0, 0.25, 0.0, 0.0]  # W1, W2 (2), b1, b2 (2)
    fit = Trainer(model).prepare(np.ones((1, 1)), np.zeros(1, int), 1)  # buffers for a one-image batch
    return model, fit


def test_worked_example_standard_momentum_with_l1_l2():
    # lr 0.1, momentum 0.5, l2 0.2, l1 0.1, gradient g = 1 for every parameter, two steps.
    model, fit = _one_weight_fit(lr=0.1, momentum=0.5, nesterov=False, l1=0.1, l2=0.2)
    lr = 0.1
    for _ in range(2):
        fit.optimizer.grad.flat[:] = lr * 1.0  # the trainer's gradients arrive pre-scaled by lr
        fit.optimizer.step(lr)
    fit.write_model()  # the trainer works on its own copy
    # weight 0.5: step 1: g' = 1 + 0.2*0.5 + 0.1*1 = 1.2; v = 1.2; w = 0.5 - 0.12 = 0.38
    #             step 2: g' = 1 + 0.076 + 0.1 = 1.176; v = 0.6 + 1.176 = 1.776; w = 0.38 - 0.1776 = 0.2024
    assert model.params[0] == pytest.approx(0.2024)
    # weight -2.0: step 1: g' = 1 - 0.4 - 0.1 = 0.5; w = -2.05
    #              step 2: g' = 1 - 0.41 - 0.1 = 0.49; v = 0.25 + 0.49 = 0.74; w = -2.05 - 0.074 = -2.124
    assert model.params[1] == pytest.approx(-2.124)
    # bias 0.25: no regularization: v1 = 1, v2 = 1.5; b = 0.25 - 0.1 - 0.15 = 0.0
    assert model.params[3] == pytest.approx(0.0)


def test_worked_example_nesterov():
    model, fit = _one_weight_fit(lr=0.1, momentum=0.5, nesterov=True)
    for _ in range(2):
        fit.optimizer.grad.flat[:] = 0.1
        fit.optimizer.step(0.1)
    fit.write_model()
    # bias 0.25, g = 1: step 1: v = 1, b -= 0.1 (1 + 0.5*1) -> 0.10;
    # step 2: v = 1.5, b -= 0.1 (1 + 0.75) -> -0.075
    assert model.params[3] == pytest.approx(-0.075)


def test_worked_example_seed_momentum_and_decay():
    # The seed's form: w -= lr_t g_t + m lr_{t-1} g_{t-1}, with the rate decayed between steps.
    model, fit = _one_weight_fit(lr=0.1, momentum=0.5, nesterov=False, momentum_form="seed",
                                    schedule="seed", decay=0.25)
    lr0, lr1 = learning_rate(model.config, 0), learning_rate(model.config, 1)
    assert (lr0, lr1) == (0.1, pytest.approx(0.08))  # 0.1 / (1 + 0.25 * 1)
    fit.optimizer.grad.flat[:] = lr0 * 2.0
    fit.optimizer.step(lr0)
    fit.optimizer.grad.flat[:] = lr1 * 1.0
    fit.optimizer.step(lr1)
    fit.write_model()
    # bias 0.25: step 1: 0.2; step 2: 0.08 + 0.5 * 0.2 = 0.18; b = 0.25 - 0.38 = -0.13
    assert model.params[3] == pytest.approx(-0.13)


@pytest.mark.parametrize("form", ["standard", "nesterov", "seed"])
def test_sgd_step_in_parameter_ranges_equals_the_whole_step(form):
    """SGD's update cut into ranges (what each thread computed the gradient of, see
    Backprop._weight_gradients) gives the whole step's parameters and velocity bit for bit, in the
    trainer's own float32 layout; L1 has no range step."""
    rng = np.random.default_rng(0)
    opts = {"nesterov": form == "nesterov", "momentum_form": "seed" if form == "seed" else "standard"}
    cfg = MLPConfig(hidden=(70, 30), l2=1e-4, momentum=0.9, **opts)
    images, labels = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64)
    fits = [Trainer(MLP(cfg)).prepare(images, labels, 64) for _ in range(2)]
    state = rng.standard_normal((3, fits[0].working.size)).astype(np.float32)
    nw, size = fits[0].working.n_weights, fits[0].working.size
    cuts = [0, 7 * 72, 1000, nw - 300, nw, size]
    for step in range(3):
        for fit in fits:
            opt = fit.optimizer
            if step == 0:
                np.copyto(opt.params.flat, state[0])
                np.copyto(opt.velocity, state[1])
            np.copyto(opt.grad.flat, state[2] * (step + 1))
        fits[0].optimizer.step(0.05)
        update = fits[1].optimizer.range_step(0.05)
        for lo, hi in sorted(zip(cuts, cuts[1:]), key=lambda r: -r[0]):  # any order
            if lo < hi:
                update(lo, hi)
        fits[1].optimizer.end_range_step()
        one, other = fits[0].optimizer, fits[1].optimizer
        np.testing.assert_array_equal(one.params.flat, other.params.flat)
        np.testing.assert_array_equal(one.velocity, other.velocity)
    with_l1 = Trainer(MLP(MLPConfig(hidden=(8,), l1=1e-4))).prepare(images, labels, 64)
    assert with_l1.optimizer.range_step(0.1) is None


def test_learning_rate_schedules():
    seed = MLPConfig(lr=1.0, schedule="seed", decay=0.1, momentum=0.0, nesterov=False)
    assert [learning_rate(seed, e) for e in range(3)] == pytest.approx([1.0, 1 / 1.1, 1 / (1.1 * 1.2)])
    step = MLPConfig(lr=0.8, schedule="step", step_size=2, gamma=0.5)
    assert [learning_rate(step, e) for e in range(5)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2])
    cos = MLPConfig(lr=1.0, schedule="cosine", epochs=4, lr_min=0.2)
    cosine = [1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6,
              0.2 + 0.8 * (1 + math.cos(3 * math.pi / 4)) / 2]
    assert [learning_rate(cos, e) for e in range(4)] == pytest.approx(cosine)
    assert learning_rate(MLPConfig(lr=0.3, schedule="constant"), 7) == 0.3


# ----- training behaviour -----


def test_history_and_learning_on_toy_data():
    x, y = _toy(400)
    cfg = MLPConfig(input_size=12, hidden=(16,), n_classes=4, epochs=8, batch_size=32, lr=0.1, l2=1e-4)
    model = MLP(cfg)
    hist = train(model, x, y, test=(x[:100], y[:100]), profile=True)
    assert [row["epoch"] for row in hist] == list(range(1, 9))
    for key in ("loss", "reg_loss", "train_accuracy", "test_accuracy", "mean_abs_error", "lr", "seconds",
                "time_gather", "time_forward", "time_loss", "time_backward", "time_update"):
        assert key in hist[-1], key
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert 0 < hist[-1]["reg_loss"] < hist[-1]["loss"]
    assert hist[-1]["train_accuracy"] > 0.85
    assert hist[-1]["test_accuracy"] == pytest.approx(model.accuracy(x[:100], y[:100]))


def test_training_is_reproducible_and_seeded():
    x, y = _toy(200)
    cfg = MLPConfig(input_size=12, hidden=(8,), n_classes=4, epochs=2, batch_size=16)
    a, b, c = MLP(cfg), MLP(cfg), MLP(cfg.replace(seed=1))
    train(a, x, y), train(b, x, y), train(c, x, y)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_large_batches_in_chunks_equal_one_chunk():
    x, y = _toy(300)
    cfg = MLPConfig(input_size=12, hidden=(8, 8), n_classes=4, epochs=3, batch_size=100, dtype="float64")
    a, b = MLP(cfg), MLP(cfg)
    train(a, x, y, chunk=1000)
    train(b, x, y, chunk=7)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10, atol=1e-12)


def test_raw_images_train_like_preprocessed_inputs():
    """uint8 images preprocessed chunk by chunk (with blank border columns left out of the
    products) train like preprocessing everything first: bit-identical for standardized inputs;
    under unit scaling the trainer multiplies raw values with first-layer weights kept divided by
    255 instead of dividing every chunk, which changes only the rounding."""
    from mnistlab.data import Preprocessor

    ds = _tiny_dataset(300, 50)
    images = ds.train_images.copy()
    images[:, :2, :] = 0  # a blank border: inactive input columns
    for kind in ("standard", "unit"):
        pre = Preprocessor.fit(kind, images)
        cfg = MLPConfig(hidden=(10,), epochs=2, batch_size=64, l1=1e-4, l2=1e-3, preprocess=kind)
        a, b = MLP(cfg, preprocess=pre), MLP(cfg, preprocess=pre)
        raw = Trainer(a)
        ha = raw.fit(images, ds.train_labels, test=(ds.test_images, ds.test_labels))
        hb = train(b, pre(images), ds.train_labels, test=(pre(ds.test_images), ds.test_labels))
        if kind == "standard":
            assert raw.input_scale == 1
            np.testing.assert_array_equal(a.params, b.params)
            assert ha == [
                dict(r, seconds=ra["seconds"], train_seconds=ra["train_seconds"]) for r, ra in zip(hb, ha)
            ]
        else:
            assert raw.input_scale == 255
            np.testing.assert_allclose(a.params, b.params, rtol=1e-4, atol=2e-6)
            for ra, rb in zip(ha, hb):
                assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
                assert ra["reg_loss"] == pytest.approx(rb["reg_loss"], rel=1e-5)
                assert abs(ra["test_accuracy"] - rb["test_accuracy"]) <= 1 / 50
        # the blank inputs' weights still decay under L2, exactly as without the trimming
        assert np.all(a.weights[0][:56] != 0)


def test_early_stopping_restores_best_weights():
    x, y = _toy(300)
    cfg = MLPConfig(
        input_size=12, hidden=(8,), n_classes=4, epochs=30, batch_size=20, lr=0.5, val=50, patience=2
    )
    model = MLP(cfg)
    trainer = Trainer(model)
    best = {}

    def remember(row):
        best[row["epoch"]] = model.params.copy()

    hist = trainer.fit(x[:250], y[:250], val=(x[250:], y[250:]), callback=remember)
    assert trainer.stopped_early and len(hist) < 30
    np.testing.assert_array_equal(model.params, best[trainer.best_epoch])
    assert hist[trainer.best_epoch - 1]["val_accuracy"] == max(r["val_accuracy"] for r in hist)


def test_divergence_raises_and_keeps_last_good_weights():
    x, y = _toy(200)
    cfg = MLPConfig(
        input_size=12, hidden=(8,), n_classes=4, epochs=3, batch_size=20, lr=1e30, momentum=0.0,
        nesterov=False,
    )
    model = MLP(cfg)
    start = model.params.copy()
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1.*lower the learning rate"):
        train(model, x, y)
    np.testing.assert_array_equal(model.params, start)


def test_loss_of_chunks_within_and_beyond_the_shared_shift_range():
    """Chunks whose logits lie within SHARED_SHIFT_RANGE of their top leave their loss to the
    epoch's tally; wider ones compute it at once. Both sum to the textbook cross-entropy."""
    x, y = _toy(60)
    x[:30] *= 0.01  # the first three chunks' hidden units stay near 0, so do their logits
    cfg = MLPConfig(input_size=12, hidden=(8,), n_classes=4, dtype="float64", seed=3)
    model = MLP(cfg)
    w, b = model.weights, model.biases
    w[-1] *= 40.0  # the other chunks' saturated units times large weights: spreads beyond 60
    logits = model.logits_from(model.to_input_matrix(x), w, b)
    spreads = [np.ptp(logits[i : i + 10]) for i in range(0, 60, 10)]
    assert min(spreads) <= SHARED_SHIFT_RANGE < max(spreads)  # both kinds of chunk
    top = logits.max(axis=1)
    expected = np.mean(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[np.arange(60), y])
    loss, _, _ = Trainer(model, chunk=10).loss_and_gradients(x, y)
    assert loss == pytest.approx(expected, rel=1e-12)


# ----- inspection interface -----


def test_layer_names_activations_and_proba():
    cfg = MLPConfig(hidden=(5, 4, 3))
    model = MLP(cfg)
    assert model.layer_names() == ["hidden1", "hidden2", "hidden3", "output"]
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    acts = model.activations(images)
    assert {k: v.shape for k, v in acts.items()} == {
        "hidden1": (6, 5), "hidden2": (6, 4), "hidden3": (6, 3), "output": (6, 10),
    }
    assert all(v.dtype == np.float32 for v in acts.values())
    proba = model.predict_proba(images)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert model.predict(images).shape == (6,)
    with pytest.raises(ConfigError, match="valid layers: hidden1, hidden2, hidden3, output"):
        model.activations(images, ["conv1"])


def test_inference_chunks_agree_with_one_pass():
    model = MLP(MLPConfig(hidden=(9,), activation="relu"))
    x = np.random.default_rng(1).standard_normal((5000, 784)).astype(np.float32)
    out = model.activations_from_inputs(x, ["output"])["output"]
    h = np.maximum(x @ model.weights[0] + model.biases[0], 0)
    z = h @ model.weights[1] + model.biases[1]
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(out, ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)


# ----- runs and the CLI -----


def _tiny_dataset(n_train=600, n_test=200, seed=0):
    rng = np.random.default_rng(seed)
    protos = (rng.random((10, 28, 28)) < 0.15) * 255.0  # sparse "strokes" on a dark ground, like MNIST
    ytr, yte = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)

    def draw(labels):
        noise = rng.normal(0, 60, (len(labels), 28, 28))
        return np.clip(protos[labels] + noise, 0, 255).astype(np.uint8)

    return Dataset(
        "mnist", draw(ytr), ytr.astype(np.uint8), draw(yte), yte.astype(np.uint8), tuple("0123456789")
    )


@pytest.fixture
def tiny(monkeypatch):
    ds = _tiny_dataset()
    monkeypatch.setattr("mnistlab.data.load_dataset", lambda name, **kw: ds)
    return ds


def test_cli_train_writes_a_run_that_reloads(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "mlp", "--epochs", "3", "--batch-size", "50", "--layers", "20,10", "--out", str(out),
               "--profile", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "phase" in text and "backward" in text
    layout = json.loads((out / "run.json").read_text())["input_layout"]
    assert layout["active"] + layout["blank"] == 784 and 0 < layout["columns_per_image"] <= 784
    assert f"input columns: {layout['active']} active, {layout['blank']} blank ones skipped" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("test accuracy ") and str(out) in last
    for name in ("run.json", "weights.npz", "preprocess.npz", "history.json", "history.csv"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["kind"] == "mlp" and manifest["config"]["hidden"] == [20, 10]
    assert len(json.loads((out / "history.json").read_text())) == 3
    model = load_model(out)
    assert isinstance(model, MLP) and model.config.hidden == (20, 10)
    acc = float(np.mean(model.predict(tiny.test_images) == tiny.test_labels))
    assert acc == pytest.approx(manifest["metrics"]["test_accuracy"])
    assert acc > 0.8


def test_cli_last_line_names_the_epoch_early_stopping_kept(tiny, tmp_path, capsys):
    """It once said "after 7 epochs" alone, while the run held the weights of an earlier epoch."""
    out = tmp_path / "run"
    assert main(["train", "mlp", "--epochs", "30", "--batch-size", "50", "--layers", "20", "--val", "100",
                 "--patience", "2", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "run.json").read_text())["metrics"]
    best, epochs = metrics["best_epoch"], metrics["epochs_trained"]
    assert metrics["stopped_early"] and best == epochs - 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"after {epochs} epochs (" in last
    assert f"s, stopped early; weights of epoch {best}, the best validation accuracy); run saved in {out}" \
        in last
    assert main(["train", "mlp", "--epochs", "1", "--batch-size", "50", "--layers", "20", "--out",
                 str(tmp_path / "one"), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert " after 1 epoch (" in last and "weights of epoch" not in last


def test_cli_preset_seed_and_overrides(tiny, tmp_path):
    from mnistlab.cli import build_parser
    from mnistlab.cli.mlp_cmd import config_from_args

    args = build_parser().parse_args(["train", "mlp", "--preset", "seed", "--epochs", "2"])
    cfg = config_from_args(args)
    chosen = (cfg.activation, cfg.output, cfg.momentum_form, cfg.schedule, cfg.epochs)
    assert chosen == ("sigmoid", "sigmoid", "seed", "seed", 2)
    assert cfg.sizes == (784, 70, 30, 10)
    out = str(tmp_path / "s")
    assert main(["train", "mlp", "--preset", "seed", "--epochs", "2", "--out", out, "--no-progress"]) == 0
    assert load_model(tmp_path / "s").config.output == "sigmoid"


def test_cli_bad_options_are_one_line(tiny, tmp_path, capsys):
    cases = [
        (["--activation", "swish"], "unknown activation 'swish'; choose one of: relu, sigmoid, tanh"),
        (["--output", "linear"], "choose one of: softmax, sigmoid"),
        (["--layers", "70,0"], "hidden layer size must be a positive integer"),
        (["--lr", "0"], "learning rate must be > 0"),
        (["--batch-size", "-5"], "batch_size must be a positive integer"),
    ]
    for extra, message in cases:
        rc = main(["train", "mlp", "--out", str(tmp_path / "x"), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and err.count("\n") == 1, (extra, err)
    assert main(["train", "mlp", "--layers", "a,b"]) == 2


def test_divergence_in_the_cli_saves_last_good_weights(tiny, tmp_path, capsys):
    out = tmp_path / "div"
    # a learning rate that survives the first epoch on this data and blows up later
    rc = main(["train", "mlp", "--epochs", "6", "--lr", "1e12", "--batch-size", "600", "--momentum", "0",
               "--no-nesterov", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert (
        rc == 1 and "training diverged in epoch" in err and f"saved in {out}" in err and err.count("\n") == 1
    )
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "diverged" and manifest["metrics"]["epochs_trained"] >= 1
    assert np.isfinite(load_model(out).params).all()


# ----- bad input, one line each -----


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(activation="softplus"), "unknown activation 'softplus'; choose one of: relu, sigmoid, tanh"),
        (dict(output="tanh"), "unknown output 'tanh'; choose one of: softmax, sigmoid"),
        (dict(hidden=(70, -3)), "hidden layer size must be a positive integer, got -3"),
        (dict(hidden=()), "hidden layers are empty"),
        (dict(input_size=0), "input_size must be a positive integer"),
        (dict(lr=0.0), "learning rate must be > 0"),
        (dict(lr=-1.0), "learning rate must be > 0"),
        (dict(momentum=1.0), "momentum must be in [0, 1)"),
        (dict(schedule="linear"), "unknown schedule 'linear'; choose one of: constant, seed, step, cosine"),
        (dict(momentum_form="seed", nesterov=True), "Nesterov momentum needs the standard momentum form"),
        (dict(patience=3), "needs a validation split"),
        (dict(l2=-0.1), "l2 must be >= 0"),
    ],
)
def test_bad_config_is_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        MLPConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_data_is_one_line():
    model = MLP(MLPConfig(input_size=12, hidden=(4,), n_classes=4, epochs=1))
    x, y = _toy(20)
    with pytest.raises(ConfigError, match="inputs have 10 values per image but the model expects 12"):
        train(model, x[:, :10], y)
    with pytest.raises(DataError, match="label 4 is out of range 0..3"):
        train(model, x, np.where(y == 0, 4, y))
    with pytest.raises(DataError, match="label -1 is out of range"):
        train(model, x, y - 1)
    with pytest.raises(DataError, match="20 inputs but labels of shape"):
        train(model, x, y[:5])
    with pytest.raises(DataError, match="labels must be integers"):
        train(model, x, y.astype(float))
    with pytest.raises(ConfigError, match="units must be integers in 0..3"):
        model.input_gradient(x[:2], "output", [0, 4])
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("fast")
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; choose one of: sgd, adam"):
        MLPConfig(optimizer="rmsprop")


def test_cli_trains_with_adam_and_old_configs_default_to_sgd(tiny, tmp_path):
    out = tmp_path / "adam"
    assert main(["train", "mlp", "--optimizer", "adam", "--lr", "0.003", "--epochs", "2", "--layers", "16",
                 "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["optimizer"] == "adam" and manifest["metrics"]["test_accuracy"] > 0.5
    old = {k: v for k, v in manifest["config"].items() if k != "optimizer"}  # a run from before optimizers
    assert MLPConfig.from_dict(old).optimizer == "sgd"


def test_incomplete_or_incompatible_runs_are_one_line(tiny, tmp_path):
    out = tmp_path / "r"
    assert main(["train", "mlp", "--epochs", "1", "--layers", "8", "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "run.json").read_text())

    (out / "weights.npz").rename(tmp_path / "w.npz")
    with pytest.raises(RunError, match="missing; the run is incomplete"):
        load_model(out)
    (tmp_path / "w.npz").rename(out / "weights.npz")

    bad = dict(manifest, config={**manifest["config"], "dropout": 0.5})
    (out / "run.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="unknown field.*dropout.*another mnistlab version"):
        load_model(out)

    bad = dict(manifest, config={**manifest["config"], "hidden": [9]})
    (out / "run.json").write_text(json.dumps(bad))
    with pytest.raises(RunError, match="W1 has shape \\(784, 8\\), expected \\(784, 9\\)"):
        load_model(out)

    (out / "run.json").write_text(json.dumps(dict(manifest, format=99)))
    with pytest.raises(RunError, match="run format 99 is not supported"):
        load_model(out)

    (out / "run.json").unlink()
    with pytest.raises(RunError, match="incomplete run"):
        load_model(out)


def test_mlp_package_never_imports_torch():
    code = (
        "import sys, mnistlab.mlp, mnistlab.cli.mlp_cmd; from mnistlab.models import load_model; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_says_when_a_training_ended_at_chance(tiny, tmp_path, capsys):
    """A finite loss at chance accuracy once ended with the usual success line and nothing else."""
    assert main(["train", "mlp", "--epochs", "3", "--batch-size", "50", "--layers", "20", "--lr", "1000",
                 "--out", str(tmp_path / "wild"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    accuracy = json.loads((tmp_path / "wild" / "run.json").read_text())["metrics"]["test_accuracy"]
    assert accuracy < 0.2
    assert f"test accuracy {100 * accuracy:.2f}% is about chance for 10 classes" in captured.err
    assert "a lower --lr" in captured.err
    assert main(["train", "mlp", "--epochs", "3", "--batch-size", "50", "--layers", "20",
                 "--out", str(tmp_path / "calm"), "--no-progress"]) == 0
    assert "about chance" not in capsys.readouterr().err


def test_cli_interrupt_says_nothing_was_saved_and_keeps_the_earlier_run(tiny, tmp_path, capsys, monkeypatch):
    import mnistlab.mlp.run as mlp_run

    out = tmp_path / "run"
    assert main(["train", "mlp", "--epochs", "1", "--batch-size", "50", "--layers", "20", "--out", str(out),
                 "--no-progress"]) == 0
    before = (out / "weights.npz").read_bytes()
    real = mlp_run.train_on_dataset

    def interrupted_after_one_epoch(*args, callback, **kw):
        def stop(row):
            callback(row)
            raise KeyboardInterrupt

        return real(*args, callback=stop, **kw)

    monkeypatch.setattr(mlp_run, "train_on_dataset", interrupted_after_one_epoch)
    capsys.readouterr()
    assert main(["train", "mlp", "--epochs", "5", "--batch-size", "50", "--layers", "20", "--out", str(out),
                 "--overwrite", "--no-progress"]) == 130
    said = capsys.readouterr().err
    assert f"interrupted; this training was not saved; {out} still holds its earlier run" in said
    assert (out / "weights.npz").read_bytes() == before
    assert main(["train", "mlp", "--epochs", "5", "--batch-size", "50", "--layers", "20",
                 "--out", str(tmp_path / "new"), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted; this training was not saved")
    assert not (tmp_path / "new").exists()
