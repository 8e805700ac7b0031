"""The NumPy MLP against PyTorch autograd on the same weights: forward, loss, every gradient,
input gradients, and several steps of SGD (momentum, Nesterov, weight decay, schedules).

torch is a test dependency only; mnistlab.mlp itself never imports it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mnistlab.mlp import MLP, MLPConfig, Trainer, learning_rate

torch = pytest.importorskip("torch")

TORCH_ACT = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def _data(n=13, d=12, classes=4, seed=0, dtype=np.float64, blank=(2, 7)):
    """Random inputs; the ``blank`` columns are zero in every row, like MNIST's border pixels,
    which the trainer leaves out of its products."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    x[:, list(blank)] = 0
    y = rng.integers(0, classes, n)
    return x, y


def _model(activation, output, *, l1=0.0, l2=0.0, dtype="float64", hidden=(7, 5), seed=3, **kw):
    cfg = MLPConfig(
        input_size=12, hidden=hidden, n_classes=4, activation=activation, output=output,
        l1=l1, l2=l2, dtype=dtype, seed=seed, **kw,
    )
    model = MLP(cfg)
    # Random non-zero biases, so that bias gradients and their (absent) regularization are exercised.
    rng = np.random.default_rng(seed + 100)
    for b in model.biases:
        b[...] = rng.normal(0, 0.3, b.shape)
    return model


def _torch_params(model):
    ws = [torch.tensor(w, requires_grad=True) for w in model.weights]
    bs = [torch.tensor(b, requires_grad=True) for b in model.biases]
    return ws, bs


def _torch_forward(model, ws, bs, x):
    cfg = model.config
    outs, a = [], x
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = a @ w + b
        if i < len(ws) - 1:
            a = TORCH_ACT[cfg.activation](z)
        else:
            logits = z
            a = torch.softmax(z, dim=1) if cfg.output == "softmax" else torch.sigmoid(z)
        outs.append(a)
    return outs, logits


def _torch_loss(model, ws, logits, y):
    cfg = model.config
    yt = torch.tensor(y)
    if cfg.output == "softmax":
        data = torch.nn.functional.cross_entropy(logits, yt)
    else:
        onehot = torch.nn.functional.one_hot(yt, cfg.n_classes).to(logits.dtype)
        data = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / len(y)
    reg = sum(cfg.l2 / 2 * (w**2).sum() + cfg.l1 * w.abs().sum() for w in ws)
    return data, reg


COMBOS = list(
    itertools.product(
        ("relu", "sigmoid", "tanh"), ("softmax", "sigmoid"),
        ((0.0, 0.0), (0.01, 0.0), (0.0, 0.02), (0.01, 0.02)),
    )
)


@pytest.mark.parametrize("activation,output,reg", COMBOS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_loss_and_every_gradient_match_autograd(activation, output, reg, dtype):
    l1, l2 = reg
    model = _model(activation, output, l1=l1, l2=l2, dtype=dtype)
    x, y = _data(dtype=np.dtype(dtype))
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == "float64" else dict(rtol=2e-4, atol=2e-6)

    ws, bs = _torch_params(model)
    outs, logits = _torch_forward(model, ws, bs, torch.tensor(x))
    data, regc = _torch_loss(model, ws, logits, y)
    (data + regc).backward()

    acts = model.activations_from_inputs(x, model.layer_names())
    for name, ref in zip(model.layer_names(), outs):
        np.testing.assert_allclose(acts[name], ref.detach().numpy(), **tol, err_msg=name)

    # chunk=5 splits the 13-item batch into chunks 5+5+3: gradient accumulation is checked too
    for chunk in (1000, 5):
        cost, reg_cost, grads = Trainer(model, chunk=chunk).loss_and_gradients(x, y)
        assert math.isclose(cost, data.item(), rel_tol=tol["rtol"] * 10, abs_tol=tol["atol"] * 10)
        assert math.isclose(
            reg_cost, regc.item() if torch.is_tensor(regc) else regc, rel_tol=1e-5, abs_tol=1e-9
        )
        for i, (w, b) in enumerate(zip(ws, bs), start=1):
            np.testing.assert_allclose(grads[f"W{i}"], w.grad.numpy(), **tol, err_msg=f"W{i} chunk {chunk}")
            np.testing.assert_allclose(grads[f"b{i}"], b.grad.numpy(), **tol, err_msg=f"b{i} chunk {chunk}")


def _sparse_data(n=40, seed=1):
    """Inputs whose last four columns are nonzero in three rows only (MNIST's rarely inked ring),
    and one blank column: with split above 3/n the staircase covers the rare columns only."""
    x, y = _data(n=n, seed=seed, blank=(2,))
    x[:, 8:] = 0
    x[[n // 13, n * 5 // 12, n * 3 // 4], 8:] = np.random.default_rng(seed).standard_normal((3, 4))
    return x, y


@pytest.mark.parametrize("activation,output", [("relu", "softmax"), ("tanh", "sigmoid")])
def test_staircase_gives_autograd_gradients(activation, output, monkeypatch):
    """The first layer's products as a staircase (groups of rows multiplying the columns up to
    their last ink) still give exact gradients, also in chunks where no row has ink in the rare
    columns."""
    _fine_staircase(monkeypatch)
    model = _model(activation, output, l1=0.01, l2=0.02)
    x, y = _sparse_data()
    ws, bs = _torch_params(model)
    _, logits = _torch_forward(model, ws, bs, torch.tensor(x))
    data, regc = _torch_loss(model, ws, logits, y)
    (data + regc).backward()
    for chunk in (1000, 5):  # chunks of 5 rows: most contain none of rows 3, 17, 30
        trainer = Trainer(model, chunk=chunk, split=0.2)
        cost, _, grads = trainer.loss_and_gradients(x, y)
        layout = trainer.layout
        assert (layout["active"], layout["always"], layout["blank"]) == (11, 7, 1), layout
        assert layout["columns_per_image"] < 11 <= 12 == trainer.fit_state.data.width
        assert math.isclose(cost, data.item(), rel_tol=1e-10)
        for i, (w, b) in enumerate(zip(ws, bs), start=1):
            np.testing.assert_allclose(
                grads[f"W{i}"], w.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"W{i} chunk {chunk}"
            )
            np.testing.assert_allclose(
                grads[f"b{i}"], b.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"b{i} chunk {chunk}"
            )


def _fine_staircase(monkeypatch):
    """Groups of a few rows and columns in steps of 2, so that the staircase engages on a few
    columns (the defaults are for MNIST's 717)."""
    from mnistlab.mlp import staircase

    monkeypatch.setattr(staircase, "GROUP_OVERHEAD", 0)
    monkeypatch.setattr(staircase, "STEP", 2)


def test_raw_unit_images_give_autograd_gradients(monkeypatch):
    """Raw uint8 images under unit scaling: the trainer multiplies raw pixel values with first-layer
    weights kept divided by 255 (no division per chunk). Loss, regularization (L1 and L2 on the
    model's weights) and every gradient still equal autograd's on the preprocessed inputs, with
    blank and rare columns, in one chunk and in several."""
    from mnistlab.data import Preprocessor

    _fine_staircase(monkeypatch)
    rng = np.random.default_rng(5)
    n = 40
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 6:22, 6:22] = rng.integers(0, 256, (n, 16, 16))  # blank border around the ink
    images[[3, 17, 30], 2, 4:9] = rng.integers(1, 256, (3, 5))  # rare ink: the staircase's last columns
    y = rng.integers(0, 10, n)
    pre = Preprocessor.fit("unit", images)
    cfg = MLPConfig(hidden=(9, 6), activation="tanh", output="softmax", l1=0.01, l2=0.02, seed=4)
    model = MLP(cfg, preprocess=pre)
    for b in model.biases:
        b[...] = rng.normal(0, 0.3, b.shape)
    ws, bs = _torch_params(model)
    _, logits = _torch_forward(model, ws, bs, torch.tensor(pre(images).reshape(n, -1)))
    data, regc = _torch_loss(model, ws, logits, y)
    (data + regc).backward()
    for chunk in (1000, 7):
        trainer = Trainer(model, chunk=chunk, split=0.1)
        cost, reg, grads = trainer.loss_and_gradients(images, y)
        assert trainer.input_scale == 255 and trainer.layout["always"] == 16 * 16, trainer.layout
        assert math.isclose(cost, data.item(), rel_tol=1e-5)
        assert math.isclose(reg, regc.item(), rel_tol=1e-5)
        for i, (w, b) in enumerate(zip(ws, bs), start=1):
            np.testing.assert_allclose(
                grads[f"W{i}"], w.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"W{i} chunk {chunk}"
            )
            np.testing.assert_allclose(
                grads[f"b{i}"], b.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"b{i} chunk {chunk}"
            )


def test_split_must_be_auto_none_or_a_fraction():
    model = _model("relu", "softmax")
    for bad in (0, 1.5, "always", -0.1):
        with pytest.raises(Exception, match="split must be"):
            Trainer(model, split=bad)


@pytest.mark.parametrize(
    "activation,output", list(itertools.product(("relu", "sigmoid", "tanh"), ("softmax", "sigmoid")))
)
def test_input_gradient_matches_autograd(activation, output):
    model = _model(activation, output)
    x, _ = _data()
    rng = np.random.default_rng(5)
    for depth, layer in enumerate(model.layer_names()):
        width = model.shapes[depth][1]
        units = rng.integers(0, width, len(x))
        values, grads = model.input_gradient(x, layer, units)

        xt = torch.tensor(x, requires_grad=True)
        ws, bs = _torch_params(model)
        outs, _ = _torch_forward(model, ws, bs, xt)
        chosen = outs[depth][torch.arange(len(x)), torch.tensor(units)]
        chosen.sum().backward()
        np.testing.assert_allclose(values, chosen.detach().numpy(), rtol=1e-10)
        np.testing.assert_allclose(grads, xt.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=layer)


def test_input_gradient_keeps_image_shape():
    cfg = MLPConfig(hidden=(6,), dtype="float64")
    model = MLP(cfg)
    x = np.random.default_rng(0).standard_normal((3, 28, 28))
    values, grads = model.input_gradient(x, "output", [1, 2, 3])
    assert values.shape == (3,) and grads.shape == (3, 28, 28)
    xt = torch.tensor(x.reshape(3, -1), requires_grad=True)
    ws, bs = _torch_params(model)
    outs, _ = _torch_forward(model, ws, bs, xt)
    outs[-1][torch.arange(3), torch.tensor([1, 2, 3])].sum().backward()
    np.testing.assert_allclose(grads.reshape(3, -1), xt.grad.numpy(), rtol=1e-9, atol=1e-13)


def _torch_epochs(model, ws, bs, x, y, opt, sched=None, l1=0.0):
    """Full-batch epochs of the same net in torch (one step each), L1 as a penalty in the loss."""
    xt = torch.tensor(x)
    for _ in range(model.config.epochs):
        opt.zero_grad()
        _, logits = _torch_forward(model, ws, bs, xt)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
        (loss + l1 * sum(w.abs().sum() for w in ws)).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _assert_same_params(model, ws, bs, rtol=1e-9, atol=1e-12):
    for i, (w, b) in enumerate(zip(ws, bs)):
        np.testing.assert_allclose(model.weights[i], w.detach().numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(model.biases[i], b.detach().numpy(), rtol=rtol, atol=atol)


def _torch_groups(ws, bs, l2):
    return [{"params": ws, "weight_decay": l2}, {"params": bs, "weight_decay": 0.0}]


@pytest.mark.parametrize(
    "opts",
    [
        dict(momentum=0.0, nesterov=False, schedule="constant"),
        dict(momentum=0.9, nesterov=False, schedule="step", step_size=1, gamma=0.5, l2=0.01),
        dict(momentum=0.8, nesterov=True, schedule="cosine", lr_min=0.01, l2=0.003),
        dict(momentum=0.5, nesterov=False, schedule="seed", decay=0.3),
    ],
)
@pytest.mark.parametrize("blank", [(), (0, 5), "tail"])
def test_sgd_steps_match_torch_optim(opts, blank):
    """Full-batch epochs (one step each), so shuffling cannot matter: our folded lr*velocity
    arithmetic, its rescaling when the schedule changes, and weight decay on weights only must
    reproduce torch.optim.SGD with a per-epoch LambdaLR."""
    model = _model("tanh", "softmax", epochs=4, batch_size=13, lr=0.5, **opts)
    cfg = model.config
    x, y = _sparse_data(n=13) if blank == "tail" else _data(blank=blank)
    ws, bs = _torch_params(model)
    opt = torch.optim.SGD(
        _torch_groups(ws, bs, cfg.l2), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: learning_rate(cfg, e) / cfg.lr)
    _torch_epochs(model, ws, bs, x, y, opt, sched)

    trainer = Trainer(model, split=0.3 if blank == "tail" else "auto")
    trainer.fit(x, y)
    # dense columns are multiplied for every image; the rare ones under split 0.3 only where inked
    assert trainer.layout["always"] == (7 if blank == "tail" else trainer.layout["active"])
    _assert_same_params(model, ws, bs)


@pytest.mark.parametrize(
    "opts",
    [
        dict(schedule="constant"),
        dict(schedule="cosine", lr_min=0.001, l2=0.01),
        dict(schedule="step", step_size=2, gamma=0.5, l1=0.003, l2=0.002),
    ],
)
@pytest.mark.parametrize("blank", [(0, 5), "tail"])
def test_adam_steps_match_torch_optim(opts, blank):
    """optimizer="adam" reproduces torch.optim.Adam (weight decay on the weights only; L1 as a
    penalty in the loss) over full-batch epochs with a per-epoch LambdaLR."""
    model = _model("tanh", "softmax", epochs=5, batch_size=40, lr=0.05, optimizer="adam", **opts)
    cfg = model.config
    x, y = _sparse_data(n=40) if blank == "tail" else _data(n=40, blank=blank)
    ws, bs = _torch_params(model)
    opt = torch.optim.Adam(_torch_groups(ws, bs, cfg.l2), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: learning_rate(cfg, e) / cfg.lr)
    _torch_epochs(model, ws, bs, x, y, opt, sched, l1=cfg.l1)

    trainer = Trainer(model, split=0.3 if blank == "tail" else "auto")
    trainer.fit(x, y)
    # dense columns are multiplied for every image; the rare ones under split 0.3 only where inked
    assert trainer.layout["always"] == (7 if blank == "tail" else trainer.layout["active"])
    _assert_same_params(model, ws, bs)


def test_adam_on_raw_images_under_unit_scaling_matches_torch():
    """float32 raw uint8 images: the trainer folds 1/255 into the first layer (see mlp.layout);
    Adam keeps its moments in the model's units, so it still reproduces torch.optim.Adam."""
    from mnistlab.data import Preprocessor

    rng = np.random.default_rng(4)
    images = np.zeros((60, 6, 6), np.uint8)
    images[:, 1:5, 1:5] = rng.integers(0, 256, (60, 4, 4)) * (rng.random((60, 4, 4)) < 0.6)
    y = rng.integers(0, 3, 60)
    pre = Preprocessor.fit("unit", images)
    cfg = MLPConfig(input_size=36, hidden=(8,), n_classes=3, optimizer="adam", lr=0.01, l2=0.01, epochs=3,
                    batch_size=60, schedule="constant")
    model = MLP(cfg, preprocess=pre)
    ws, bs = _torch_params(model)
    opt = torch.optim.Adam(_torch_groups(ws, bs, cfg.l2), lr=cfg.lr)
    _torch_epochs(model, ws, bs, pre(images).reshape(60, -1), y, opt)
    trainer = Trainer(model)
    trainer.fit(images, y)
    assert trainer.input_scale == 255
    _assert_same_params(model, ws, bs, rtol=2e-4, atol=2e-6)
