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
