"""The real CNN engine: attribution maps against Captum's on fixed images, and the interface
extensions attribution needs (layer gradients, re-initialized weights).

Captum sees the same torch network behind the same preprocessing, as a function of raw pixels with
softmax probabilities as its output (and p(4) - p(9) for the pair target), so both compute the
same quantity and must agree to float32 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from mnistlab.cnn.model import CNN, build_net  # noqa: E402
from mnistlab.data import Preprocessor  # noqa: E402
from mnistlab.inspect.attribution import attribute, upsample_bilinear  # noqa: E402

SPEC = "conv:6:3,pool:2,conv:8:3,pool:2,flatten,dense:12,output:10"


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (64, 28, 28)).astype(np.uint8)
    preprocess = Preprocessor.fit("standard", train)
    model = CNN(SPEC, preprocess, build_net(SPEC, init="glorot", seed=0))
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.float32)
    images[:, :4] = 0  # some black rows, as in real digits
    mean, scale = torch.from_numpy(preprocess.mean), torch.from_numpy(preprocess.scale)

    def probabilities(x):  # (N, 1, 28, 28) raw pixels -> (N, 10)
        return torch.softmax(model.net((x[:, 0] - mean) / scale), dim=1)

    return model, images, probabilities


def _forward_and_target(probabilities, target):
    if target == "4,9":
        def margin(x):  # one forward pass: Captum's layer hooks must see the layer once
            p = probabilities(x)
            return p[:, 4] - p[:, 9]

        return margin, None
    return probabilities, target


def _close(ours, theirs, rel=1e-4):
    theirs = theirs.detach().numpy()[:, 0] if hasattr(theirs, "detach") else theirs
    scale = np.abs(theirs).max()
    if scale == 0:  # Grad-CAM of a layer whose weighted maps are all negative: both must be zero
        assert np.abs(ours).max() == 0
        return 0.0
    diff = np.abs(ours - theirs).max()
    assert diff <= rel * scale, f"max difference {diff:.3g} against a peak of {scale:.3g}"
    return diff / scale


@pytest.mark.parametrize("target", [4, "4,9"])
def test_saliency_ig_occlusion_gradcam_equal_captum(setup, target):
    model, images, probabilities = setup
    forward, captum_target = _forward_and_target(probabilities, target)
    x = torch.from_numpy(images)[:, None].clone().requires_grad_(True)

    ours = attribute(model, images, target, "gradient")
    _close(ours.maps, captum_attr.Saliency(forward).attribute(x, target=captum_target, abs=False))

    ours = attribute(model, images, target, "ig", steps=40)
    theirs, delta = captum_attr.IntegratedGradients(forward).attribute(
        x, baselines=torch.zeros_like(x), target=captum_target, n_steps=40, method="gausslegendre",
        return_convergence_delta=True,
    )
    _close(ours.maps, theirs)
    np.testing.assert_allclose(ours.completeness_error, delta.detach().numpy(), atol=1e-5)

    ours = attribute(model, images, target, "occlusion", window=5, stride=3)
    theirs = captum_attr.Occlusion(forward).attribute(
        x, sliding_window_shapes=(1, 5, 5), strides=(1, 3, 3), baselines=0, target=captum_target)
    _close(ours.maps, theirs)

    for layer in ("conv1", "conv2", "pool2"):
        ours = attribute(model, images, target, "gradcam", layer=layer)
        theirs = captum_attr.LayerGradCam(forward, model.net._modules[layer]).attribute(
            x, target=captum_target, relu_attributions=True)
        _close(ours.layer_maps, theirs)
        assert ours.layer_maps.max() > 0 or layer != "conv1"


def test_gradcam_upsampling_is_torch_bilinear():
    maps = np.random.default_rng(0).random((2, 5, 7))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=(28, 28), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(upsample_bilinear(maps), theirs.numpy()[:, 0], atol=1e-12)


def test_gradient_x_input_and_smoothgrad_follow_the_gradient(setup):
    """gradient x input is Captum's InputXGradient; SmoothGrad with no noise is the gradient."""
    model, images, probabilities = setup
    x = torch.from_numpy(images)[:, None].clone().requires_grad_(True)
    ours = attribute(model, images, 7, "gradient-x-input")
    _close(ours.maps, captum_attr.InputXGradient(probabilities).attribute(x, target=7))
    plain = attribute(model, images, 7, "gradient").maps
    _close(attribute(model, images, 7, "smoothgrad", noise=0.0, samples=3).maps, plain)


# ----- the interface extensions on the CNN engine -----


def test_cnn_layer_gradient_equals_captums_layer_gradient(setup):
    model, images, probabilities = setup
    x = torch.from_numpy(images)[:, None].clone().requires_grad_(True)
    inputs = model.to_inputs(images)
    for wrt in ("conv2", "dense1", "output"):
        values, acts, grads = model.layer_gradient(inputs, "output", np.array([4, 4, 4]), wrt)
        np.testing.assert_allclose(acts, model.activations(images, [wrt])[wrt], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(values, model.predict_proba(images)[:, 4], rtol=1e-5)
        if wrt == "output":
            np.testing.assert_allclose(grads, np.eye(10)[[4, 4, 4]])
            continue
        theirs = captum_attr.LayerGradientXActivation(
            probabilities, model.net._modules[wrt], multiply_by_inputs=False
        )
        _close(grads, theirs.attribute(x, target=4).detach().numpy())
    # a map layer's unit is the mean of its map, as in input_gradient
    values, _, _ = model.layer_gradient(inputs, "conv2", np.array([0, 3, 7]), "conv1")
    np.testing.assert_allclose(
        values, model.input_gradient(inputs, "conv2", np.array([0, 3, 7]))[0], rtol=1e-6
    )
    with pytest.raises(Exception, match="comes after"):
        model.layer_gradient(inputs, "conv1", np.array([0, 0, 0]), "dense1")


def test_cnn_with_random_weights_replaces_only_the_named_layers(setup):
    model = setup[0]
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    rng_state = torch.random.get_rng_state()
    random = model.with_random_weights(["output", "dense1"], seed=4)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's random stream is untouched
    after = random.net.state_dict()
    for key, value in before.items():
        changed = not torch.equal(after[key], value)
        assert changed == key.startswith(("output.", "dense1.")), key
        assert torch.equal(model.net.state_dict()[key], value)
    again = model.with_random_weights(["output"], seed=4).net.state_dict()
    assert torch.equal(again["output.linear.weight"], after["output.linear.weight"])
    assert model.layers_with_weights() == ["conv1", "conv2", "dense1", "output"]
