"""The sanity check on real MNIST: maps of a trained model against the maps after cascading
randomization (Adebayo et al. 2018), for a quickly trained NumPy MLP and a small PyTorch CNN.

What must hold: a method that reads the model falls apart once its weights are random (gradient on
the MLP, Grad-CAM on the CNN, every method's signed map), while the magnitude of a map multiplied by
the image (gradient x input, integrated gradients from black) stays where the ink is, whatever the
weights: the check must show that difference, not hide it.
"""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.data import Preprocessor, load_dataset
from mnistlab.inspect.sanity import cascading_randomization

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", progress=False).subset(8000, 500)


@pytest.fixture(scope="module")
def mlp(mnist):
    from mnistlab.mlp import MLP, MLPConfig, train

    config = MLPConfig(epochs=2, batch_size=100, lr=0.1)
    preprocess = Preprocessor.fit(config.preprocess, mnist.train_images)
    model = MLP(config, preprocess=preprocess)
    train(model, preprocess(mnist.train_images), mnist.train_labels)
    assert float((model.predict(mnist.test_images) == mnist.test_labels).mean()) > 0.9
    return model


@pytest.fixture(scope="module")
def cnn(mnist, tmp_path_factory):
    pytest.importorskip("torch")
    from mnistlab.cnn import train

    result = train(
        mnist, out=tmp_path_factory.mktemp("sanity") / "cnn", progress=False, device="cpu", threads=1,
        spec="conv:8:3,pool:2,conv:16:3,pool:2,flatten,dense:32,output:10", epochs=2, batch_size=64,
    )
    assert float((result.model.predict(mnist.test_images) == mnist.test_labels).mean()) > 0.9
    return result.model


def _mean(values: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        return float(np.nanmean(values))


def test_the_mlp_gradient_falls_apart_under_randomization(mlp, mnist):
    result = cascading_randomization(mlp, mnist.test_images[:10], None, "gradient")
    assert result.layers == ["output", "hidden2", "hidden1"]
    steps = [_mean(row) for row in result.rank_correlation]
    assert steps[-1] < 0.3, steps  # random first-layer weights: a map unrelated to the trained one
    assert steps[0] > steps[-1] + 0.3, steps  # the cascade takes it apart step by step


def test_the_cnn_gradcam_and_signed_gradient_fall_apart(cnn, mnist):
    images = mnist.test_images[:10]
    cam = cascading_randomization(cnn, images, None, "gradcam")
    assert max(_mean(row) for row in cam.rank_correlation) < 0.5, cam.table()
    gradient = cascading_randomization(cnn, images, None, "gradient")
    assert abs(_mean(gradient.signed_rank_correlation[-1])) < 0.3, gradient.table()


def test_maps_multiplied_by_the_image_keep_its_shape(mlp, mnist):
    result = cascading_randomization(mlp, mnist.test_images[:10], None, "ig", steps=16)
    assert _mean(result.rank_correlation[-1]) > 0.9  # |map|: zero wherever the image is black, in any network
    assert abs(_mean(result.signed_rank_correlation[-1])) < 0.3  # but which way each pixel pushes is lost
