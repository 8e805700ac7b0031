"""mnistlab.from_torch: any nn.Module inspected like a trained run, checked against torch itself."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

import mnistlab
from mnistlab.data.preprocess import Preprocessor
from mnistlab.errors import ConfigError


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6 * 11 * 11, 12),
        nn.ELU(),
        nn.Linear(12, 10),
    ).eval()


class FlatNet(nn.Module):
    """(N, 784) in, probabilities out, a module called twice (so it is no layer of its own)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.act = nn.Linear(784, 16), nn.Linear(16, 10), nn.Sigmoid()

    def forward(self, x):
        return torch.softmax(self.fc2(self.act(self.act(self.fc1(x)))), dim=1)


def images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def test_activations_and_probabilities_equal_the_module_run_by_hand():
    net = small_cnn()
    model = mnistlab.from_torch(net, preprocess="unit")
    assert model.layer_names() == [str(i) for i in range(9)] + ["output"]
    assert model.input_layout == "image" and model.output == "logits"
    x = images()
    acts = model.activations(x)
    with torch.no_grad():
        t = torch.from_numpy(x.astype(np.float32) / 255).unsqueeze(1)
        conv = net[0](t)
        expected_conv = conv.clone().numpy()  # before the in-place ReLU overwrites it
        np.testing.assert_allclose(acts["0"], expected_conv, atol=1e-6)
        np.testing.assert_allclose(acts["2"], net[2](net[1](conv)).numpy(), atol=1e-6)
        np.testing.assert_allclose(acts["output"], torch.softmax(net(t), 1).numpy(), atol=1e-6)
    assert acts["2"].shape == (6, 4, 13, 13) and acts["6"].shape == (6, 12)


def test_input_gradient_equals_autograd_through_the_module_by_hand():
    net = small_cnn()
    model = mnistlab.from_torch(net, preprocess="unit", layers=["3", "7"])
    inputs = model.to_inputs(images(2, seed=3))
    cases = (
        ("3", [1, 5], lambda t: net[:4](t)[:, :, :, :].flatten(2).mean(2)),
        ("7", [0, 11], lambda t: net[:8](t)),
        ("output", [3, 3], lambda t: torch.softmax(net(t), 1)),
    )
    for layer, units, forward in cases:
        values, grads = model.input_gradient(inputs, layer, units)
        x = torch.from_numpy(inputs).unsqueeze(1).requires_grad_(True)
        picked = forward(x)[torch.arange(2), torch.tensor(units)]
        (expected,) = torch.autograd.grad(picked.sum(), x)
        np.testing.assert_allclose(values, picked.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads, expected[:, 0].numpy(), rtol=1e-4, atol=1e-7)
        assert np.abs(grads).max() > 0


def test_flat_modules_probability_outputs_and_modules_called_twice():
    model = mnistlab.from_torch(FlatNet(), preprocess="none")
    assert model.input_layout == "flat" and model.output == "probabilities"
    assert model.layer_names() == ["fc1", "fc2", "output"]  # act runs twice: not a layer
    x = images(3)
    with torch.no_grad():
        expected = FlatNet()(torch.from_numpy(x.reshape(3, 784).astype(np.float32))).numpy()
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=1e-6)


@pytest.mark.slow
def test_every_analysis_runs_on_a_wrapped_module(tmp_path):
    from mnistlab.inspect import build_report, compare_classes, confusions, find_ambiguous, optimize_inputs
    from test_web_helpers import tiny_dataset

    ds = tiny_dataset()
    model = mnistlab.from_torch(small_cnn(), preprocess=Preprocessor.fit("standard", ds.train_images))
    assert confusions(model, ds, "test").matrix.sum() == len(ds.test_images)
    assert compare_classes(model, ds, 1, 7, n=3).layers
    assert find_ambiguous(model, ds, (1, 7)) is not None
    assert optimize_inputs(model, "3", units=[0, 1, 2], steps=3).images.shape[0] == 3
    html = build_report(  # no manifest or history: a wrapped module has neither
        model,
        ds,
        pair=(1, 7),
        n_compare=2,
        n_ambiguous=2,
        oip_steps=3,
        oip_max_units=4,
    )
    assert "No training history" in html and "mnistlab report: torch on" in html


def test_bad_modules_and_names_are_one_clear_error():
    with pytest.raises(ConfigError, match="needs a torch.nn.Module"):
        mnistlab.from_torch(lambda x: x)
    with pytest.raises(ConfigError, match="neither"):
        mnistlab.from_torch(nn.Linear(10, 10))
    with pytest.raises(ConfigError, match="gives 5 outputs per image; .* 10 classes"):
        mnistlab.from_torch(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)))
    with pytest.raises(ConfigError, match="no submodule 'conv9'; its layers: 0, 1"):
        mnistlab.from_torch(small_cnn(), layers=["conv9"])
    with pytest.raises(ConfigError, match="'standard'"):
        mnistlab.from_torch(small_cnn(), preprocess="standard")
