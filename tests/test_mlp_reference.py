"""The fast trainer equals the textbook one (mnistlab.mlp.reference) in float64, option by option."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.mlp import MLP, MLPConfig, Trainer, staircase
from mnistlab.mlp.config import PRESETS
from mnistlab.mlp.reference import train_reference


def _data(n: int = 120, width: int = 20, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Dense columns, a blank one and rarely nonzero ones: the fast trainer's column split engages."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (n, width))
    x[:, 0] = 0  # blank in every image: skipped
    x[:, 1:5] *= rng.random((n, 4)) < 0.06  # rarely nonzero: the staircase's columns under split=0.2
    y = (x[:, 5:9] + 0.3 * rng.normal(0, 1, (n, 4))).argmax(axis=1) % classes
    return x, y


CASES = {
    "default-like": dict(activation="tanh", output="softmax", nesterov=True, l2=1e-3, schedule="cosine"),
    # the seed preset's network and update rule (its pixel preprocessing aside: these inputs are not
    # pixels), with a smaller step and a faster decay for this tiny net, and an L1 penalty
    "seed-like": {
        **{k: v for k, v in PRESETS["seed"].items() if k != "preprocess"},
        **dict(lr=0.5, decay=0.05, l1=1e-3, l2=0.0),
    },
    "relu-step-l1-l2": dict(
        activation="relu",
        output="softmax",
        nesterov=False,
        l1=2e-3,
        l2=5e-3,
        schedule="step",
        step_size=1,
        gamma=0.5,
    ),
    "no-momentum": dict(
        activation="sigmoid",
        output="softmax",
        momentum=0.0,
        nesterov=False,
        l2=0.0,
        schedule="constant",
        lr=0.3,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk, split", [(500, "auto"), (16, 0.2)])
def test_fast_trainer_equals_reference(case, chunk, split, monkeypatch):
    # groups of a few rows, columns in steps of 4: the staircase engages on 20 columns
    monkeypatch.setattr(staircase, "GROUP_OVERHEAD", 0)
    monkeypatch.setattr(staircase, "STEP", 4)
    x, y = _data()
    cfg = MLPConfig(
        input_size=20,
        hidden=(12, 7),
        n_classes=4,
        dtype="float64",
        epochs=4,
        batch_size=50,
        seed=3,
        **{"lr": 0.1, "momentum": 0.9, **CASES[case]},
    )
    fast, slow = MLP(cfg), MLP(cfg)
    trainer = Trainer(fast, chunk=chunk, split=split, adapt_threads=False)
    history = trainer.fit(x, y)
    losses = train_reference(slow, x, y)
    layout = trainer.layout
    assert layout["blank"] == 1 and layout["always"] == 15, layout  # the dense columns
    assert layout["groups"] > 1 and layout["columns_per_image"] < 20, layout  # columns skipped
    np.testing.assert_allclose(fast.params, slow.params, rtol=1e-9, atol=1e-12)
    assert [row["loss"] for row in history] == pytest.approx(losses, rel=1e-10)
    assert not np.allclose(slow.params, MLP(cfg).params)  # it trained


def test_reference_gradient_matches_finite_differences():
    """The reference's own backward pass is checked too, so the pair cannot agree on a wrong answer."""
    from mnistlab.mlp.reference import data_loss_and_delta, forward

    x, y = _data(30)
    for output in ("softmax", "sigmoid"):
        model = MLP(
            MLPConfig(input_size=20, hidden=(5,), n_classes=4, output=output, dtype="float64", seed=1)
        )
        W, b = model.weights, model.biases
        acts, logits = forward(model, W, b, x)
        _, delta = data_loss_and_delta(output, logits, y)
        grad_w2 = acts[1].T @ delta
        eps = 1e-6
        for i, j in [(0, 0), (2, 3), (4, 1)]:
            W[1][i, j] += eps
            up = data_loss_and_delta(output, forward(model, W, b, x)[1], y)[0]
            W[1][i, j] -= 2 * eps
            down = data_loss_and_delta(output, forward(model, W, b, x)[1], y)[0]
            W[1][i, j] += eps
            assert (up - down) / (2 * eps) == pytest.approx(grad_w2[i, j], rel=1e-6, abs=1e-9)


def test_adding_an_optimizer_walkthrough_shows_the_real_class():
    """docs/adding-an-optimizer.md quotes the Adam class; the quote must not drift from the code."""
    import inspect
    import re
    from pathlib import Path

    from mnistlab.mlp.optimizers import OPTIMIZERS, Adam

    doc = (Path(__file__).resolve().parents[1] / "docs" / "adding-an-optimizer.md").read_text()
    block = re.search(r"<!-- optimizer-class:Adam -->\n```python\n(.*?)```", doc, re.S)
    assert block is not None and block.group(1) == inspect.getsource(Adam)
    table = ", ".join(f'"{name}": {cls.__name__}' for name, cls in OPTIMIZERS.items())
    assert f"OPTIMIZERS: dict[str, type[Optimizer]] = {{{table}}}" in doc
