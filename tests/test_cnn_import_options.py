"""Layer-kind options added for imported models: TensorFlow's same padding, dilation, no bias,
batch-norm epsilon and placement, leaky ReLU; keyword-only, round-tripping through the spec."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.cnn.layers import KINDS
from mnistlab.cnn.spec import count_params, infer_shapes, parse_spec
from mnistlab.errors import ConfigError


@pytest.mark.parametrize(
    "size,kernel,stride,dilation,expected",
    [
        (28, 3, 2, 1, (0, 1, 0, 1)),  # odd total: the extra pixel at the right and bottom
        (28, 4, 2, 1, (1, 1, 1, 1)),
        (7, 2, 1, 1, (0, 1, 0, 1)),  # even kernel, stride 1
        (7, 3, 1, 2, (2, 2, 2, 2)),  # dilation 2: a 5-wide span
        (14, 5, 3, 1, (1, 2, 1, 2)),
    ],
)
def test_tf_same_pads_as_tensorflow_does(size, kernel, stride, dilation, expected):
    spec = parse_spec(f"conv:2:{kernel}:stride={stride}:pad=tf_same:dilation={dilation},flatten,output:10")
    layer = spec.layers[0]
    assert KINDS["conv"].pads(layer, (1, size, size)) == expected
    out = -(-size // stride)  # TensorFlow: ceil(size / stride)
    shapes = infer_shapes(parse_spec({"input": [1, size, size], "layers": spec.to_dict()["layers"]}))
    assert shapes[0].output_shape == (2, out, out)


def test_options_are_keyword_only_round_trip_and_count_parameters():
    text = (
        "conv:6:3:stride=2:pad=tf_same:act=leaky_relu:bias=False,bn:eps=0.001:after_act=True,gap,"
        "dense:5:bias=False,output:10"
    )
    spec = parse_spec(text)
    assert spec.to_string() == text and parse_spec(spec.to_dict()) == spec
    assert count_params(spec) == 6 * 9 + 2 * 6 + 6 * 5 + 5 * 10 + 10
    plain = parse_spec("conv:6:3,flatten,output:10").to_dict()["layers"][0]
    assert "dilation" not in plain and "bias" not in plain  # manifests of older runs stay as they were
    with pytest.raises(ConfigError, match="too many arguments"):
        parse_spec("conv:8:3:1:valid:relu:2,flatten,output:10")
    with pytest.raises(ConfigError, match="pad=tf_same"):
        parse_spec("conv:8:4:pad=same,flatten,output:10")


def test_the_torch_blocks_compute_what_the_options_say():
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    from mnistlab.cnn.model import build_net

    net = build_net(
        "conv:3:3:stride=2:pad=tf_same:dilation=2:bias=false:act=leaky_relu,"
        "bn:eps=0.01:after_act=true,flatten,output:10",
        seed=0,
    ).eval()
    with torch.no_grad():
        bn = net.conv1.bn
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32))
        conv = net.conv1.conv
        assert conv.bias is None and conv.dilation == (2, 2)
        # TensorFlow's same for a 5-wide span at stride 2 on 28: 3 pixels in all, 1 before and 2 after
        expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, stride=2, dilation=2)
        expected = F.leaky_relu(expected, 0.01)
        expected = (expected - bn.running_mean[None, :, None, None]) / torch.sqrt(
            bn.running_var[None, :, None, None] + 0.01
        ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        np.testing.assert_allclose(net.conv1(x).numpy(), expected.numpy(), atol=1e-5)
