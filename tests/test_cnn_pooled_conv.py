"""The one-pass first block (mnistlab.cnn.pooled_conv: a C kernel for conv -> 2x2 max pool -> ReLU
of a one-channel image) against torch's own layers: values and gradients in float32."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mnistlab.cnn import native, pooled_conv  # noqa: E402
from mnistlab.cnn.model import build_net, channels_last_strides  # noqa: E402

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler to build the kernel")


def _reference(x, conv):
    return F.relu(F.max_pool2d(conv(x), 2))


@pytest.mark.parametrize(("size", "kernel", "channels", "bias"),
                         [(26, 3, 32, True), (28, 3, 8, True), (27, 3, 16, False), (28, 5, 8, True)])
def test_kernel_matches_conv_pool_relu_with_gradients(size, kernel, channels, bias):
    torch.manual_seed(size + kernel)
    conv = nn.Conv2d(1, channels, kernel, bias=bias).to(memory_format=torch.channels_last)
    x = torch.rand(5, 1, size, size)
    x[:, :, : size // 3] = 0  # all-zero rows (MNIST's borders) tie each window's four sums
    x[1, 0, 4:8, 4:8] = 0.25  # a flat patch: ties of non-zero sums too
    x = channels_last_strides(x)
    assert pooled_conv.eligible(conv, nn.MaxPool2d(2), nn.ReLU())
    got, want = pooled_conv.conv_pool_relu(x, conv), _reference(x, conv)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in conv.parameters()]
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    want_grads = torch.autograd.grad((want * weights).sum(), params)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))


def test_ties_send_the_gradient_to_the_first_maximum():
    """A window whose four sums are equal passes its gradient on once, from its first position,
    as max pooling does; an output the ReLU zeroed passes none."""
    conv = nn.Conv2d(1, 8, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.zeros(1, 1, 4, 4)
    out = pooled_conv.conv_pool_relu(x, conv)
    torch.testing.assert_close(out.flatten(), F.relu(conv.bias.detach()))
    (bias_grad,) = torch.autograd.grad(out.sum(), [conv.bias])
    torch.testing.assert_close(bias_grad, (conv.bias.detach() > 0).float())


def test_only_one_channel_convolutions_with_a_pooling_and_relu_are_eligible():
    pool, relu = nn.MaxPool2d(2), nn.ReLU()
    assert not pooled_conv.eligible(nn.Conv2d(2, 8, 3), pool, relu)
    assert not pooled_conv.eligible(nn.Conv2d(1, 8, 3, padding=1), pool, relu)
    assert not pooled_conv.eligible(nn.Conv2d(1, 8, 3), nn.MaxPool2d(3), relu)
    assert not pooled_conv.eligible(nn.Conv2d(1, 8, 3), pool, nn.Tanh())
    assert not pooled_conv.eligible(nn.Conv2d(1, 6, 3), pool, relu)  # channels in blocks of 8
    assert build_net("seed").pooled_conv_plan() == ["conv1"]
    assert build_net("conv:8:3:act=tanh,pool:2,flatten,output:10").pooled_conv_plan() == []


def test_network_with_the_kernel_matches_the_plain_network():
    net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
    x = channels_last_strides(torch.rand(6, 1, 28, 28))
    y = torch.arange(6)
    results = []
    for plan in (set(), {"conv1"}):
        net.pooled_conv = plan
        logits = net(x)
        results.append((logits, torch.autograd.grad(F.cross_entropy(logits, y), list(net.parameters()))))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))
    x.requires_grad_(True)  # an input that wants its gradient (inspection) runs as written
    (grad,) = torch.autograd.grad(net(x).sum(), [x])
    assert grad.abs().sum() > 0


def test_without_a_compiler_the_kernel_levers_are_not_offered(monkeypatch):
    from mnistlab.cnn import winograd

    monkeypatch.setenv("CC", "/nonexistent/cc")
    native.library.cache_clear()
    try:
        assert native.library() is None and native.built() == ""
        assert build_net("seed").pooled_conv_plan() == [] and build_net("seed").pool_relu_plan() == []
        # a resumed run keeps its recorded levers: without the kernels its blocks run as written
        net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
        x = channels_last_strides(torch.rand(4, 1, 28, 28))
        for autocast in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                net.pooled_conv, net.pool_relu = set(), set()
                plain = net(x)
                net.pooled_conv, net.pool_relu = {"conv1"}, {"conv1", "conv2"}
                assert torch.equal(net(x), plain)
        conv = nn.Conv2d(8, 8, 3)
        assert not winograd._native(torch.zeros(1, 8, 6, 6), conv, 2, True)
        torch.testing.assert_close(winograd.conv2d(torch.ones(1, 8, 6, 6), conv, 2),
                                   conv(torch.ones(1, 8, 6, 6)), rtol=1e-5, atol=1e-5)  # torch's transforms
        from mnistlab.cnn import Optimizer

        weight = nn.Parameter(torch.ones(3))
        weight.grad = torch.ones(3)
        optimizer = Optimizer([weight], "rmsprop", 0.1)
        optimizer.step()  # torch's operations instead of the kernels
        assert not optimizer._native
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.1 / (0.1 + 1e-7) ** 0.5))
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


def test_under_bf16_autocast_the_block_still_computes_in_float32():
    """Autocast leaves the kernel alone: the first block's output is float32 and the same bit for
    bit as without autocast; the network after it runs in bf16, and the whole network's logits and
    gradients stay within bf16 rounding of the float32 network's (relative to their norm)."""
    net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
    net.pooled_conv = {"conv1"}
    x = channels_last_strides(torch.rand(6, 1, 28, 28))
    y = torch.arange(6)
    with torch.no_grad():
        plain = net(x, until="pool1")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x, until="pool1")
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    results = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = net(x)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        loss = F.cross_entropy(logits.float(), y)
        results.append((logits.detach().float(), torch.autograd.grad(loss, list(net.parameters()))))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))
    for g, w in zip(got_grads, want_grads):  # each gradient as a whole: bf16 rounds single entries
        assert g.dtype == torch.float32
        assert float((g - w).norm() / w.norm()) < 0.25  # bf16 autocast's own rounding, with room


def test_a_pooling_with_dropout_attached_is_not_taken_over_by_a_kernel():
    """A kernel that pools (the one-pass first block, Winograd's pooled tiles, pool_relu) would skip
    a dropout attached to the pooling: no plan offers such a block, and levers recorded for it (a
    resumed run) leave it running as written, dropout included (the same draws: the same output)."""
    from mnistlab.cnn import pool_relu

    net = build_net("conv:8:3,pool:2,dropout:0.5,conv:8:3,pool:2,dropout:0.5,flatten,output:10",
                    "glorot", seed=0).to(memory_format=torch.channels_last)
    assert net.pooled_conv_plan() == [] and net.pool_relu_plan() == []
    assert pool_relu.eligible(net.pool1.pool, net.conv1.act)  # the pooling itself would do
    net.train()
    x = channels_last_strides(torch.rand(4, 1, 28, 28))
    for autocast, levers in ((False, {"pooled_conv": {"conv1"}, "winograd": {"conv2": 2}}),
                             (True, {"pooled_conv": {"conv1"}, "pool_relu": {"conv1", "conv2"}})):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            net.pooled_conv, net.winograd, net.pool_relu = set(), {}, set()
            torch.manual_seed(0)
            plain = net(x)
            for name, value in levers.items():
                setattr(net, name, value)
            torch.manual_seed(0)
            # Winograd's own rounding aside (float32): a skipped dropout moves logits by tenths
            torch.testing.assert_close(net(x), plain, rtol=1e-4, atol=1e-4)
