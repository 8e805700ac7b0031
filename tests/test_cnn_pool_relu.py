"""The one-pass bf16 max pooling and ReLU (mnistlab.cnn.pool_relu: a C kernel) against torch's own
max_pool2d and relu: the same values and gradients bit for bit, ties, signed zeros and NaN
included (a NaN's payload aside)."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mnistlab.cnn import native, pool_relu  # noqa: E402
from mnistlab.cnn.model import build_net, channels_last_strides  # noqa: E402

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler to build the kernel")


def _both(x, grad_seed=1):
    """(output, input gradient) of torch's pooling + ReLU and of the kernel, for the same x."""
    results = []
    for run in (lambda t: F.relu(F.max_pool2d(t, 2)), pool_relu.pool_relu):
        leaf = x.clone().requires_grad_(True)
        out = run(leaf)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(x.dtype)
        (grad,) = torch.autograd.grad(out, [leaf], weights)
        results.append((out, grad))
    return results


@pytest.mark.parametrize("shape", [(4, 16, 10, 10), (3, 8, 7, 9), (2, 8, 2, 3), (1, 64, 24, 24)])
def test_kernel_equals_torch_bit_for_bit(shape):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape).to(torch.bfloat16)
    x[0, :, :2, :2] = 0.5  # a window of four equal values: the first one wins
    x[0, 0, 2:4, 2:4] = -1.0  # all negative: the ReLU blocks the gradient
    x[0, -1, :2, :2] = torch.tensor([[-0.0, -1.0], [0.0, -2.0]])  # the signed zeros keep their bits
    if shape[2] > 4:
        x[-1, -1, 4, 5] = float("nan")  # NaN wins its window and passes its gradient
        x[-1, -1, 5, 4] = x[-1, 0, 4, 4] = float("nan")  # two NaN in a window: the last wins, as in torch
        x[-1, 0, 5, 5] = 1e4
    x = x.contiguous(memory_format=torch.channels_last)
    assert pool_relu.usable(x)
    (want, want_grad), (got, got_grad) = _both(x)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan())
    bits = lambda t: t.contiguous().view(torch.int16)  # noqa: E731  (torch.equal takes -0.0 for 0.0)
    assert torch.equal(bits(got.nan_to_num()), bits(want.nan_to_num()))  # a NaN's payload may differ
    assert torch.equal(bits(got_grad), bits(want_grad))
    assert got_grad.is_contiguous(memory_format=torch.channels_last)
    if shape[2] % 2:  # the row the floor drops gets no gradient
        assert not got_grad[:, :, -1].any()


def test_only_bf16_channels_last_maps_in_blocks_of_lanes_are_taken():
    x = torch.randn(2, 8, 6, 6)
    assert not pool_relu.usable(x.contiguous(memory_format=torch.channels_last))  # float32
    assert not pool_relu.usable(x.to(torch.bfloat16))  # NCHW memory
    assert not pool_relu.usable(torch.randn(2, 6, 6, 6).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last))  # 6 channels
    assert pool_relu.eligible(nn.MaxPool2d(2), nn.ReLU())
    assert not pool_relu.eligible(nn.MaxPool2d(3), nn.ReLU())
    assert not pool_relu.eligible(nn.MaxPool2d(2), nn.Tanh())
    assert build_net("seed").pool_relu_plan() == ["conv1", "conv2"]
    assert build_net("conv:8:3,pool:2,flatten,output:10").pool_relu_plan() == ["conv1"]
    assert build_net("conv:8:3:act=tanh,pool:2,flatten,output:10").pool_relu_plan() == []


def test_seed_network_under_bf16_autocast_is_unchanged_by_the_kernel(monkeypatch):
    """An exact replacement: the same logits and parameter gradients bit for bit; in float32 (no
    autocast) the kernel is not used and the network runs as written."""
    calls = []
    kernel = pool_relu.pool_relu
    monkeypatch.setattr(pool_relu, "pool_relu", lambda x: calls.append(x.shape) or kernel(x))
    net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
    x = channels_last_strides(torch.rand(8, 1, 28, 28))
    y = torch.arange(8) % 10
    results = []
    for plan in (set(), {"conv1", "conv2"}):
        net.pool_relu = plan
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
        grads = torch.autograd.grad(F.cross_entropy(logits.float(), y), list(net.parameters()))
        results.append((logits, grads))
    (want, want_grads), (got, got_grads) = results
    assert torch.equal(got, want)
    assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))
    assert calls == [(8, 32, 24, 24), (8, 64, 10, 10)]  # both pools ran in the kernel
    torch.testing.assert_close(net(x), build_net("seed", "glorot", seed=0)(x), rtol=1e-5, atol=1e-6)
    assert len(calls) == 2
