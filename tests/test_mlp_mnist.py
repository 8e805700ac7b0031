"""A quick real-MNIST sanity check of the NumPy MLP (marked slow: needs the dataset)."""

from __future__ import annotations

import pytest

from mnistlab.data import Preprocessor, load_dataset
from mnistlab.mlp import MLP, MLPConfig, train


@pytest.mark.slow
def test_one_epoch_on_a_few_thousand_mnist_images_is_sane():
    ds = load_dataset("mnist", progress=False).subset(5000, 2000)
    cfg = MLPConfig(epochs=1, batch_size=50, lr=0.1)
    pre = Preprocessor.fit(cfg.preprocess, ds.train_images)
    model = MLP(cfg, preprocess=pre)
    hist = train(model, pre(ds.train_images), ds.train_labels, test=(pre(ds.test_images), ds.test_labels))
    assert hist[0]["test_accuracy"] > 0.85, hist
    # the interface on raw images agrees with the training-time evaluation
    acc = float((model.predict(ds.test_images) == ds.test_labels).mean())
    assert acc == pytest.approx(hist[0]["test_accuracy"])


@pytest.mark.slow
def test_staircase_on_mnist_trains_like_dense_products():
    """On MNIST the first layer multiplies each image's row only up to its last ink (a staircase
    of groups, see mlp/staircase.py): the same sums in another order, so float64 training matches
    dense products closely, and the per-epoch test accuracy (computed on the staircase's layout)
    matches the model's own."""
    import numpy as np

    from mnistlab.mlp import Trainer

    ds = load_dataset("mnist", progress=False).subset(3000, 1000)
    cfg = MLPConfig(epochs=2, batch_size=500, lr=0.2, l2=1e-3, dtype="float64")
    pre = Preprocessor.fit(cfg.preprocess, ds.train_images)
    x, xt = pre(ds.train_images), pre(ds.test_images)
    runs = {}
    for split in ("auto", None):
        model = MLP(cfg, preprocess=pre)
        trainer = Trainer(model, split=split)
        hist = trainer.fit(x, ds.train_labels, test=(xt, ds.test_labels))
        runs[split] = (model, trainer.layout, hist)
    split_model, layout, hist = runs["auto"]
    assert layout["groups"] > 2 and layout["columns_per_image"] < 0.75 * layout["active"], layout
    assert layout["active"] + layout["blank"] == 784 and 0 < layout["always"] < layout["active"] / 2
    np.testing.assert_allclose(split_model.params, runs[None][0].params, rtol=1e-9, atol=1e-11)
    assert hist[-1]["test_accuracy"] == split_model.accuracy(xt, ds.test_labels)
    assert [r["loss"] for r in hist] == pytest.approx([r["loss"] for r in runs[None][2]], rel=1e-10)


@pytest.mark.slow
def test_raw_test_images_are_scored_like_the_model():
    """The per-epoch test accuracy is computed from raw uint8 test images block by block in the
    trainer's layout (unit scaling: raw values against the trainer's scaled weights;
    standardization: each block preprocessed) and equals the model's own accuracy."""
    from mnistlab.mlp import Trainer

    ds = load_dataset("mnist", progress=False).subset(3000, 2000)
    for kind in ("unit", "standard"):
        cfg = MLPConfig(epochs=1, batch_size=100, lr=0.1, preprocess=kind)
        pre = Preprocessor.fit(kind, ds.train_images)
        model = MLP(cfg, preprocess=pre)
        trainer = Trainer(model)
        hist = trainer.fit(ds.train_images, ds.train_labels, test=(ds.test_images, ds.test_labels))
        # standardization: its centred columns are multiplied for every image
        assert trainer.layout["test_columns_per_image"] < (784 if kind == "standard" else 600), trainer.layout
        assert hist[0]["test_accuracy"] == model.accuracy(pre(ds.test_images), ds.test_labels)
        assert hist[0]["test_accuracy"] > 0.8, kind
