"""The fast trainer's speed measures change nothing but speed: padded hidden widths (mlp/layout.py)
and the per-epoch count of accuracy and error (mlp/tally.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.mlp import MLP, MLPConfig, Trainer, layout, staircase, tally


def _data(n=300, width=20, classes=4, seed=5):
    """Dense columns plus rarely nonzero ones, so the staircase skips columns too."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, width)).astype(np.float32)
    x[:, :4] *= rng.random((n, 4)) < 0.05
    y = (x[:, 4:8] + 0.5 * rng.standard_normal((n, 4))).argmax(axis=1) % classes
    return x, y


def _wider_outputs_keep_bits(rows: int, padded: tuple[int, ...], widths: tuple[int, ...]) -> bool:
    """Whether this BLAS computes the first ``width`` outputs of a product ``padded`` wide (forward
    and weight-gradient layouts) with the bits of a product ``width`` wide."""
    rng = np.random.default_rng(0)
    for fan_in, wide, width in zip(widths, padded[1:], widths[1:]):
        a = rng.standard_normal((rows, fan_in)).astype(np.float32)
        w = rng.standard_normal((fan_in, wide)).astype(np.float32)
        d = rng.standard_normal((rows, wide)).astype(np.float32)
        if not np.array_equal(a @ w[:, :width], (a @ w)[:, :width]):
            return False
        if not np.array_equal(a.T @ d[:, :width], (a.T @ d)[:, :width]):
            return False
    return True


@pytest.mark.parametrize(
    "activation, hidden, padded, chunk",
    [
        ("tanh", (12, 7), (16, 8), 25),
        ("relu", (12, 7), (16, 8), 25),
        ("sigmoid", (12, 7), (12, 7), 25),
        ("tanh", (70, 30), (72, 32), 500),  # the default widths: BLAS takes other paths for these
    ],
)
def test_padded_hidden_units_stay_zero_and_leave_the_sums_alone(
    activation, hidden, padded, chunk, monkeypatch
):
    # groups of a few rows, columns in steps of 4: the staircase engages on 20 columns
    monkeypatch.setattr(staircase, "GROUP_OVERHEAD", 0)
    monkeypatch.setattr(staircase, "STEP", 4)
    x, y = _data(n=1000)
    cfg = MLPConfig(
        input_size=20, hidden=hidden, n_classes=4, epochs=2, batch_size=500, lr=0.2, l1=1e-4, l2=1e-3,
        activation=activation, seed=2,
    )
    fast, plain = MLP(cfg), MLP(cfg)
    trainer = Trainer(fast, chunk=chunk, split=0.1, adapt_threads=False)
    history = trainer.fit(x, y, test=(x[:50], y[:50]))
    working = trainer.fit_state.working
    # sigmoid maps 0 to 1/2: a pad unit would not stay silent, so those layers are not padded
    assert working.sizes == (20, *padded, 4) and trainer.layout["columns_per_image"] < 20
    params = trainer.fit_state.optimizer.params
    (h1, h2) = hidden
    assert not params.weights[0][:, h1:].any()
    assert not params.biases[0][h1:].any() and not params.biases[1][h2:].any()
    assert not params.weights[1][h1:].any() and not params.weights[1][:, h2:].any()
    assert not params.weights[2][h2:].any()

    monkeypatch.setattr(layout, "PAD_WIDTH", 1)
    plain_trainer = Trainer(plain, chunk=chunk, split=0.1, adapt_threads=False)
    plain_history = plain_trainer.fit(x, y, test=(x[:50], y[:50]))
    if not _wider_outputs_keep_bits(chunk, (20, *padded), (20, *hidden)):
        # OpenBLAS's AVX2 kernels sum some outputs of a wider product in another order
        np.testing.assert_allclose(fast.params, plain.params, rtol=1e-5, atol=1e-6)
        return
    np.testing.assert_array_equal(fast.params, plain.params)
    for row, plain_row in zip(history, plain_history):
        for key in ("train_accuracy", "mean_abs_error", "test_accuracy"):
            assert row[key] == plain_row[key], key
        # the L2 penalty's dot product also sums the pads' zeros, so its last bits may differ
        assert row["loss"] == pytest.approx(plain_row["loss"], rel=1e-6)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_epoch_tally_counts_what_the_batch_saw(output):
    """One batch per epoch in several chunks: the epoch's accuracy and error are those of the initial
    weights on the whole set, counted from every chunk's predictions."""
    x, y = _data(n=130)
    cfg = MLPConfig(
        input_size=20, hidden=(9,), n_classes=4, epochs=1, batch_size=130, output=output, dtype="float64"
    )
    model = MLP(cfg)
    proba = model.activations_from_inputs(x, ["output"])["output"]
    logits = model.logits_from(model.to_input_matrix(x), model.weights, model.biases)
    (row,) = Trainer(model, chunk=40, adapt_threads=False).fit(x, y)
    onehot = np.eye(4)[y]
    assert row["train_accuracy"] == np.mean(logits.argmax(axis=1) == y)
    assert row["mean_abs_error"] == pytest.approx(np.abs(proba - onehot).mean(), rel=1e-12)


def test_epoch_arrangement_sorts_each_chunk_by_descending_reach_in_order(monkeypatch):
    """Staircase.arrange, once per epoch, equals sorting every chunk on its own by descending reach
    (stably: equals in the epoch's order), and gives each group the columns of its first image's
    reach, rounded up to a step."""
    monkeypatch.setattr(staircase, "GROUP_OVERHEAD", 0)
    monkeypatch.setattr(staircase, "STEP", 4)
    x, y = _data(n=1000)
    model = MLP(MLPConfig(input_size=20, hidden=(6,), n_classes=4))
    data = layout.TrainData(model, x, y, "auto")
    assert len(np.unique(data.levels)) > 1
    order = np.random.default_rng(3).permutation(1000)
    starts = np.array([0, 300, 500, 800, 950])  # uneven chunks, as batches of 500 in chunks of 300 give
    stairs = staircase.Staircase(data.levels, data.width, starts, 1000)
    arranged, steps = stairs.arrange(order)
    for lo, hi, chunk_steps in zip(starts, [*starts[1:], 1000], steps):
        chunk = order[lo:hi]
        expected = chunk[np.argsort(-data.levels[chunk].astype(int), kind="stable")]
        np.testing.assert_array_equal(arranged[lo:hi], expected)
        bounds = chunk_steps.bounds
        assert bounds[0] == 0 and bounds[-1] == hi - lo and len(bounds) > 2
        for (a, b, columns) in chunk_steps.forward():
            reach = data.levels[arranged[lo + a : lo + b]].astype(int) * 4
            assert columns == min(reach.max(), data.width) and columns == min(reach[0], data.width)


def test_tally_counts_argmax_hits_with_ties_as_argmax_breaks_them():
    """Correct predictions counted from the epoch's logits match np.argmax, which takes the first
    of tied top classes."""
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, (200, 4)).astype(np.float32)  # many ties
    labels = rng.integers(0, 4, 200)
    counts = tally.Tally(200, 4, np.float32)
    counts.logits[:] = logits.T
    counts.labels[:] = labels
    counts.start_epoch()
    assert counts.correct(20, 180) == np.count_nonzero(logits[20:180].argmax(axis=1) == labels[20:180])


def test_correct_count_from_column_maxima_matches_argmax_with_ties_and_nans():
    """The column-maxima count (training's tally and the per-epoch test pass) agrees with np.argmax
    when tops are tied and when a column holds NaN (argmax picks the first NaN)."""
    rng = np.random.default_rng(1)
    for case in range(60):
        n, classes = int(rng.integers(1, 200)), int(rng.integers(1, 11))
        if case % 3 == 0:
            logits = rng.integers(0, 3, (n, classes)).astype(np.float32)  # many ties
        else:
            logits = rng.standard_normal((n, classes)).astype(np.float32)
        if case % 4 == 0:
            logits[rng.integers(0, n, 3), rng.integers(0, classes, 3)] = np.nan
        labels = rng.integers(0, classes, n)
        by_class = np.ascontiguousarray(logits.T)
        counted = tally.count_correct(by_class, labels, by_class[labels, np.arange(n)])
        assert counted == np.count_nonzero(logits.argmax(axis=1) == labels)
