"""Attribution maps on the NumPy MLP engine and on the hand-written test models: gradients against
finite differences, integrated-gradients completeness, occlusion by hand, the layer-gradient and
re-initialization extensions of the interface on both engines, Spearman, and the error messages."""

from __future__ import annotations

import numpy as np
import pytest

from _inspect_models import CORNER, planted_arrays, planted_mlp
from mnistlab.data import Preprocessor
from mnistlab.errors import ConfigError
from mnistlab.inspect.attribution import (
    METHODS,
    Target,
    attribute,
    attribute_each_class,
    attribute_target,
    objective_values,
    occlusion_windows,
    parse_target,
)
from mnistlab.inspect.sanity import average_ranks, cascading_randomization, spearman
from mnistlab.mlp import MLP, MLPConfig

# The stated bound: with 50 Gauss-Legendre points the map sums to f(x) - f(baseline) within 1%
# of that difference on these smooth (tanh) networks; docs/attribution.md gives the measurements.
IG_RELATIVE_ERROR = 0.01


@pytest.fixture(scope="module")
def images():
    return planted_arrays(n_per_class=2, seed=4)["test_images"][[8, 9, 18, 19]].astype(np.float64)


@pytest.fixture(scope="module")
def mlp():
    """A tiny float64 MLP of the real engine behind per-pixel standardization (so the pixel-space
    scaling is exercised), with weights large enough for confident, curved probabilities."""
    rng = np.random.default_rng(0)
    preprocess = Preprocessor.fit("standard", rng.integers(0, 256, (40, 28, 28)).astype(np.uint8))
    model = MLP(MLPConfig(hidden=(6, 5), activation="tanh", dtype="float64", seed=1), preprocess=preprocess)
    for w in model.weights:
        w *= 3
    return model


def _numeric_pixel_gradient(model, image, target: Target, eps: float = 0.25) -> np.ndarray:
    """Central differences of the objective over every pixel, all 1568 shifted images in one batch.
    A quarter of a pixel level: preprocessing hands the model float32 inputs, whose round-off
    would swamp a smaller step."""
    shifts = np.zeros((784, 28, 28))
    shifts.reshape(784, 784)[np.arange(784), np.arange(784)] = eps
    batch = np.concatenate([image + shifts, image - shifts])
    values = objective_values(model, batch, target.take(np.zeros(len(batch), int)))
    return ((values[:784] - values[784:]) / (2 * eps)).reshape(28, 28)


@pytest.mark.parametrize("target", [3, "4,9", None])
def test_mlp_gradient_equals_finite_differences(mlp, images, target):
    result = attribute(mlp, images[:2], target, "gradient")
    for i in range(2):
        numeric = _numeric_pixel_gradient(mlp, images[i], result.target.take(slice(i, i + 1)))
        assert np.abs(numeric).max() > 1e-6
        np.testing.assert_allclose(result.maps[i], numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())
    np.testing.assert_allclose(
        attribute(mlp, images[:2], target, "gradient-x-input").maps, images[:2] * result.maps, rtol=1e-6
    )


@pytest.mark.parametrize("target", [4, "4,9"])
def test_mlp_integrated_gradients_are_complete(mlp, images, target):
    result = attribute(mlp, images, target, "ig", steps=50)
    gap = result.objective - result.baseline_objective
    assert np.abs(gap).min() > 1e-3  # a real difference to account for
    np.testing.assert_allclose(
        result.completeness_error, result.maps.sum(axis=(1, 2), dtype=np.float64) - gap, atol=1e-5
    )
    assert result.relative_completeness_error().max() < IG_RELATIVE_ERROR, (
        result.relative_completeness_error()
    )
    # more points, smaller error: the quadrature converges
    coarse = attribute(mlp, images, target, "ig", steps=4)
    assert np.abs(result.completeness_error).mean() < np.abs(coarse.completeness_error).mean()


def test_ig_from_another_baseline_and_per_image_baselines(mlp, images):
    grey = attribute(mlp, images, 4, "ig", baseline=60.0, steps=50)
    per_image = attribute(mlp, images, 4, "ig", baseline=np.full(images.shape, 60.0), steps=50)
    np.testing.assert_allclose(grey.maps, per_image.maps)
    assert grey.relative_completeness_error().max() < IG_RELATIVE_ERROR
    at_grey = objective_values(mlp, np.full((1, 28, 28), 60.0), Target(np.array([4])))
    np.testing.assert_allclose(grey.baseline_objective, at_grey[0], rtol=1e-6)


def test_gradient_of_a_plain_interface_model_equals_finite_differences(images):
    """The hand-written MLP of _inspect_models (only the basic interface): pixel gradient by differences."""
    for model in (planted_mlp(),):
        result = attribute(model, images[:1], "4,9", "gradient")
        # it answers in float32: a step of 4 pixel levels keeps its round-off small against the change
        numeric = _numeric_pixel_gradient(model, images[0], result.target, eps=4.0)
        np.testing.assert_allclose(result.maps[0], numeric, rtol=1e-2, atol=1e-2 * np.abs(numeric).max())


def test_occlusion_by_hand(images):
    """Each pixel: the mean drop of the objective over the windows that cover it."""
    model = planted_mlp()
    result = attribute(model, images[:1], 4, "occlusion", window=6, stride=4)
    starts = occlusion_windows(6, 4)
    assert starts == [0, 4, 8, 12, 16, 20, 24]  # the last window is cut at the border, as Captum does
    total, count = np.zeros((28, 28)), np.zeros((28, 28))
    full = objective_values(model, images[:1], Target(np.array([4])))[0]
    for r in starts:
        for c in starts:
            hidden = images[0].copy()
            hidden[r : r + 6, c : c + 6] = 0
            total[r : r + 6, c : c + 6] += (
                full - objective_values(model, hidden[None], Target(np.array([4])))[0]
            )
            count[r : r + 6, c : c + 6] += 1
    np.testing.assert_allclose(result.maps[0], total / count, rtol=1e-5, atol=1e-9)
    # the planted 4-detector looks at the corner square: hiding it costs p(4) most
    assert result.maps[0][CORNER].mean() > np.abs(result.maps[0]).mean()


def test_smoothgrad_is_the_mean_gradient_of_noisy_copies(mlp, images):
    result = attribute(mlp, images[:1], 2, "smoothgrad", samples=8, noise=20.0, seed=3)
    noisy = images[0] + 20.0 * np.random.default_rng(3).standard_normal((1, 8, 28, 28))
    expected = attribute(mlp, noisy[0], 2, "gradient").maps.mean(axis=0)
    np.testing.assert_allclose(result.maps[0], expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(
        result.maps, attribute(mlp, images[:1], 2, "smoothgrad", samples=8, noise=20.0, seed=3).maps
    )


def test_each_class_and_predicted_target(mlp, images):
    each = attribute_each_class(mlp, images[0], "gradient")
    assert list(each.target.positive) == list(range(10))
    for k in (0, 7):
        np.testing.assert_allclose(each.maps[k], attribute(mlp, images[:1], k, "gradient").maps[0], rtol=1e-6)
    predicted = attribute(mlp, images, None, "gradient")
    np.testing.assert_array_equal(predicted.target.positive, mlp.predict(images))


def test_gradcam_needs_map_layers(mlp, images):
    with pytest.raises(ConfigError, match="gradcam needs a layer of maps.*use gradient"):
        attribute(mlp, images[:1], 4, "gradcam")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, x: attribute(m, x, 4, "saliency"),
            "unknown attribution method 'saliency'; choose one of: gradient",
        ),
        (
            lambda m, x: attribute(m, x, 4, "ig", window=3),
            "ig has no option 'window'; its options: baseline, steps",
        ),
        (lambda m, x: attribute(m, x, 4, "ig", steps=0), "steps must be a positive whole number"),
        (lambda m, x: attribute(m, x, "4,4"), "names one class twice"),
        (lambda m, x: attribute(m, x, "4,x"), "give e.g. 4 or 4,9"),
        (lambda m, x: attribute(m, x, 12), "class 12 does not exist; classes are 0..9"),
        (lambda m, x: attribute(m, x[0, :5], 4), r"expected images of shape \(N, 28, 28\)"),
        (lambda m, x: attribute(m, x, 4, "occlusion", window=3, stride=4), "stride <= window"),
        (lambda m, x: attribute(m, x, 4, "ig", baseline=np.zeros(5)), "baseline must be a pixel level"),
    ],
)
def test_bad_input_is_one_clear_error(mlp, images, call, message):
    with pytest.raises(ConfigError, match=message):
        call(mlp, images[:1])


def test_parse_target():
    assert parse_target(None) is None and parse_target("predicted") is None
    assert parse_target(4) == (4, None) and parse_target("4") == (4, None)
    assert parse_target("4,9") == (4, 9) == parse_target("4 vs 9") == parse_target((4, 9))
    assert set(METHODS) == {"gradient", "gradient-x-input", "ig", "smoothgrad", "occlusion", "gradcam"}


# ----- the interface extensions on the MLP engine (the CNN's are in test_attribution_engines.py) -----


def test_mlp_layer_gradient_by_directional_differences(mlp, images):
    inputs = mlp.to_inputs(images)
    units = np.array([4, 1, 9, 0])
    values, acts, grads = mlp.layer_gradient(inputs, "output", units, "hidden1")
    np.testing.assert_allclose(acts, mlp.activations(images, ["hidden1"])["hidden1"])
    np.testing.assert_allclose(values, mlp.input_gradient(inputs, "output", units)[0])
    direction = np.random.default_rng(1).standard_normal(acts.shape)
    eps = 1e-5

    def objective(a):
        p = np.exp(mlp.logits_from(a, mlp.weights, mlp.biases, start=1))
        return (p / p.sum(axis=1, keepdims=True))[np.arange(len(a)), units]

    numeric = (objective(acts + eps * direction) - objective(acts - eps * direction)) / (2 * eps)
    np.testing.assert_allclose((grads * direction).sum(axis=1), numeric, rtol=1e-6)
    _, _, onehot = mlp.layer_gradient(inputs, "hidden2", units % 5, "hidden2")
    np.testing.assert_array_equal(onehot, np.eye(5)[units % 5])
    with pytest.raises(ConfigError, match="comes after"):
        mlp.layer_gradient(inputs, "hidden1", units, "output")


def test_mlp_with_random_weights_replaces_only_the_named_layers(mlp, images):
    before = mlp.get_params()
    random = mlp.with_random_weights(["output", "hidden2"], seed=5)
    after = random.get_params()
    np.testing.assert_array_equal(after["W1"], before["W1"])
    assert not np.allclose(after["W3"], before["W3"]) and not np.allclose(after["W2"], before["W2"])
    np.testing.assert_array_equal(mlp.get_params()["W3"], before["W3"])  # the original is untouched
    np.testing.assert_array_equal(mlp.with_random_weights(["output"], seed=5).get_params()["W3"], after["W3"])
    assert mlp.layers_with_weights() == ["hidden1", "hidden2", "output"]


def test_spearman_with_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    x = np.random.default_rng(0).standard_normal(50)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ties: Pearson correlation of the average ranks, by hand
    a, b = np.array([0, 0, 1, 2, 2.0]), np.array([1, 0, 0, 3, 2.0])
    ra, rb = np.array([0.5, 0.5, 2, 3.5, 3.5]), np.array([2, 0.5, 0.5, 4, 3])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert np.isnan(spearman(np.zeros(5), x[:5]))


def test_cascading_randomization_steps_and_target(mlp, images):
    result = cascading_randomization(mlp, images[:2], None, "gradient", seed=2)
    assert result.layers == ["output", "hidden2", "hidden1"]
    assert result.rank_correlation.shape == result.signed_rank_correlation.shape == (3, 2)
    for randomized in result.randomized:  # the trained model's predicted class is kept
        np.testing.assert_array_equal(randomized.target.positive, mlp.predict(images[:2]))
    step = mlp.with_random_weights(["output", "hidden2"], seed=2)
    expected = attribute_target(step, images[:2], result.trained.target, "gradient").maps
    np.testing.assert_array_equal(result.randomized[1].maps, expected)
    assert np.nanmean(result.rank_correlation[-1]) < 0.9
    assert [row["randomized down to"] for row in result.table()] == result.layers
