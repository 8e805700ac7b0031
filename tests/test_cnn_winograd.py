"""Winograd 3x3 convolutions (mnistlab.cnn.winograd) against torch's own convolution: values and
gradients, in float64 (the algebra, to rounding) and in float32 (the error the lever adds)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mnistlab.cnn import native, winograd  # noqa: E402
from mnistlab.cnn.model import build_net  # noqa: E402


@pytest.mark.parametrize("m", winograd.TILES)
def test_transforms_compute_the_valid_correlation(m):
    at, g, bt = winograd.matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        taps, inputs = rng.normal(size=3), rng.normal(size=m + 2)
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ inputs)), np.correlate(inputs, taps, "valid"),
                                   atol=1e-12)


def _conv(cin, cout, padding=0, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, 3, padding=padding).to(dtype)


def _grads(out, tensors, seed=1):
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), tensors)


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize(("size", "padding", "channels_last"),
                         [(13, 0, True), (5, 0, False), (9, 1, True), (8, 0, False)])
def test_winograd_matches_conv2d_with_gradients(m, size, padding, channels_last):
    conv = _conv(3, 5, padding)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    want = conv(x)
    got = winograd.conv2d(x, conv, m)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    params = [x, conv.weight, conv.bias]
    for g, w in zip(_grads(got, params), _grads(want, params)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)


@pytest.mark.parametrize("size", [13, 12, 28])
def test_pooled_tiles_match_conv_then_max_pool(size):
    """m = 2 with the 2x2 pooling taken over: values, and gradients routed to each window's max;
    all-zero regions (MNIST's borders) tie a window's four values, and the first gets the gradient."""
    conv = _conv(4, 6).to(memory_format=torch.channels_last)
    x = torch.randn(3, 4, size, size, dtype=torch.float64)
    x[:, :, : size // 2] = 0
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    want = F.max_pool2d(conv(x), 2)
    got = winograd.conv2d(x, conv, 2, pool=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    params = [x, conv.weight, conv.bias]
    for g, w in zip(_grads(got, params), _grads(want, params)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)


def test_float32_error_stays_at_rounding_level():
    """The seed network's conv2 and conv3 shapes in float32, against a float64 reference."""
    for cin, cout, size, m, pool in [(32, 64, 13, 2, True), (64, 64, 5, 3, False), (64, 64, 11, 4, False)]:
        conv64 = _conv(cin, cout, seed=cin + size)
        nn.init.xavier_uniform_(conv64.weight)
        conv32 = _conv(cin, cout, dtype=torch.float32)
        conv32.load_state_dict({k: v.float() for k, v in conv64.state_dict().items()})
        x = torch.rand(4, cin, size, size, dtype=torch.float64)
        with torch.no_grad():
            ref = conv64(x)
            ref = F.max_pool2d(ref, 2) if pool else ref
        with torch.no_grad():
            x32 = x.float().contiguous(memory_format=torch.channels_last)
            got = winograd.conv2d(x32, conv32, m, pool=pool)
            direct = conv32(x.float())
            direct = F.max_pool2d(direct, 2) if pool else direct
        scale = float(ref.abs().max())
        err, err_direct = float((got.double() - ref).abs().max()), float((direct.double() - ref).abs().max())
        assert err < 2e-6 * scale * (1 + m), (cin, size, m, err, scale)
        assert err < 50 * max(err_direct, 1e-7 * scale), (err, err_direct)


def test_network_with_winograd_matches_the_plain_network():
    """Net.winograd switches blocks over; logits and every parameter's gradient stay the same."""
    net = build_net("conv:8:3,pool:2,conv:8:3,pool:2,conv:5:3,flatten,dense:8,output:10", "glorot", seed=0)
    net = net.double().to(memory_format=torch.channels_last)
    plan = net.winograd_plan()
    # one input channel: no candidate; pooled: m = 2; a 3x3 output: one tile of 3
    assert plan == {"conv2": 2, "conv3": 3}
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.arange(5) % 10
    results = []
    for fast in ({}, plan):
        net.winograd = dict(fast)
        logits = net(x)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), list(net.parameters()))
        results.append((logits, grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)
    net.fuse_pooling = False  # pooling as its own block: the conv runs unpooled
    torch.testing.assert_close(net(x), want, rtol=0, atol=1e-12)


def test_only_plain_3x3_convolutions_are_planned():
    net = build_net("conv:8:5,conv:8:3:stride=2,conv:8:3,bn,conv:8:3:dilation=2,conv:8:3,flatten,output:10")
    # 28 -> 24 (5x5) -> 11 (stride 2) -> 9 (batch norm in the block) -> 5 (dilated) -> 3: one 3x3 tile
    assert net.winograd_plan() == {"conv5": 3}
    assert winograd.tile_for(11, 11, pool=False) == 4 and winograd.tile_for(11, 11, pool=True) == 2


@pytest.mark.skipif(native.library() is None, reason="no C compiler to build the transforms")
@pytest.mark.parametrize(("m", "size", "pool"), [(2, 12, True), (2, 13, True), (2, 9, False), (3, 5, False),
                                                  (3, 10, False), (4, 11, False)])
def test_c_transforms_match_conv2d_in_float32(m, size, pool):
    """float32 with channel counts in blocks of 8 takes the C transforms (kernels.c): values and
    gradients against torch's convolution (and max pooling), to float32 rounding."""
    torch.manual_seed(size)
    conv = nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    x = torch.rand(3, 8, size, size)
    x[:, :, : size // 2] = 0
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert winograd._native(x, conv, m, pool)
    want = F.max_pool2d(conv(x), 2) if pool else conv(x)
    got = winograd.conv2d(x, conv, m, pool=pool)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [x, conv.weight, conv.bias]
    for g, w in zip(_grads(got, params), _grads(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))


@pytest.mark.skipif(native.library() is None, reason="no C compiler to build the transforms")
def test_c_transforms_give_the_same_results_when_threads_first_call_them_together():
    """A split batch's parts call the C transforms from two threads at once, often on a cold cache
    of the transform matrices: every call must still give the one-thread results bit for bit
    (a kernel once read a matrix that only the other thread's cache entry kept alive)."""
    import threading

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    x = torch.rand(4, 8, 12, 12).contiguous(memory_format=torch.channels_last)

    def step() -> list[torch.Tensor]:
        xs = x.clone().requires_grad_(True)
        y = winograd.conv2d(xs, conv, 2, pool=True)
        return [y.detach(), *torch.autograd.grad(y.square().sum(), [xs, conv.weight])]

    want = step()
    for _ in range(40):
        winograd._float_matrices.cache_clear()
        barrier, results = threading.Barrier(4), []

        def worker(barrier: threading.Barrier, results: list) -> None:
            barrier.wait()
            results.append(step())

        threads = [threading.Thread(target=worker, args=(barrier, results)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got in results:
            for g, w in zip(got, want):
                assert torch.equal(g, w)
