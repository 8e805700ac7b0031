"""The torch network built from a spec: parameters, hooks, input gradients, optimizers, schedules."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # pytest -n 2 on 2 cores: more threads per worker only oversubscribe

from mnistlab.cnn import CNN, Net, Optimizer, Schedule, build_net, count_params, parse_spec  # noqa: E402
from mnistlab.data import Preprocessor  # noqa: E402
from mnistlab.errors import ConfigError  # noqa: E402

SMALL = "conv:4:3,pool:2,conv:6:3:pad=same:act=tanh,bn,pool:2,flatten,dense:12:act=elu,dropout:0.2,output:10"


def _model(spec=SMALL, seed=0):
    rng = np.random.default_rng(seed)
    pre = Preprocessor.fit("standard", rng.integers(0, 256, (50, 28, 28)).astype(np.uint8))
    net = build_net(spec, init="glorot", seed=seed)
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return CNN(spec, pre, net), rng


@pytest.mark.parametrize("name", ["seed", "seed-vi", "fast", "best"])
def test_torch_parameter_count_matches_the_dry_pass(name):
    net = Net(parse_spec(name))
    assert sum(p.numel() for p in net.parameters()) == count_params(parse_spec(name))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("spec", ["seed", "conv:5:3,bn,pool:2,conv:4:3:act=tanh,pool:2,flatten,output:10"])
@pytest.mark.parametrize("bf16", [False, True])
def test_pooling_before_relu_gives_identical_outputs_and_gradients(spec, bf16):
    """Training runs conv -> pool -> relu where the spec says conv -> relu -> pool (see Net):
    outputs and every gradient must be bit-identical to the layer order as written."""
    net = build_net(spec, init="glorot", seed=1)
    assert net.pool_first == ({"conv1": "pool1"} if "tanh" in spec else {"conv1": "pool1", "conv2": "pool2"})
    x = torch.randn(16, 1, 28, 28)
    results = []
    for fuse in (True, False):
        net.fuse_pooling = fuse
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().sum().backward()
        results.append([out.detach().clone()] + [p.grad.clone() for p in net.parameters()])
    for fused, written in zip(*results):
        assert torch.equal(fused, written)
    # a hook on conv1 must see relu(conv(x)) at full size, so hooked blocks run as written
    net.fuse_pooling = True
    seen = {}
    handle = net.conv1.register_forward_hook(lambda _m, _i, out: seen.setdefault("conv1", out))
    net(x)
    handle.remove()
    assert seen["conv1"].shape[-1] == 26 and seen["conv1"].min() >= 0


def test_activations_have_documented_shapes_and_meaning():
    model, rng = _model()
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    acts = model.activations(images)
    assert model.layer_names() == ["conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "output"]
    assert {k: v.shape for k, v in acts.items()} == {
        "conv1": (5, 4, 26, 26), "pool1": (5, 4, 13, 13), "conv2": (5, 6, 13, 13), "pool2": (5, 6, 6, 6),
        "flatten": (5, 216), "dense1": (5, 12), "output": (5, 10)}
    np.testing.assert_allclose(acts["output"].sum(1), 1, rtol=1e-5)
    # conv1 is relu(conv(x)); conv2 is tanh(bn(conv(pool1))) with running statistics (eval mode).
    x = torch.from_numpy(model.to_inputs(images)).unsqueeze(1)
    conv1 = model.net.conv1.conv
    np.testing.assert_allclose(acts["conv1"], torch.relu(conv1(x)).detach().numpy(), atol=1e-5)
    c2 = model.net.conv2
    ref = torch.tanh(c2.bn(c2.conv(torch.from_numpy(acts["pool1"])))).detach().numpy()
    np.testing.assert_allclose(acts["conv2"], ref, atol=1e-5)
    np.testing.assert_allclose(
        acts["pool1"], acts["conv1"].reshape(5, 4, 13, 2, 13, 2).max((3, 5)), atol=1e-6
    )
    np.testing.assert_array_equal(model.predict(images), acts["output"].argmax(1))
    with pytest.raises(ConfigError, match="valid layers: conv1, pool1"):
        model.activations(images, ["conv9"])


def test_input_gradient_is_batched_and_matches_finite_differences():
    model, rng = _model()
    model.net.double()
    model._as_tensor = lambda a: torch.from_numpy(np.asarray(a, np.float64).reshape(-1, 28, 28))  # exact FD
    inputs = model.to_inputs(rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)).astype(np.float64)
    for layer, units in [
        ("conv2", [0, 3, 5]), ("dense1", [1, 2, 11]), ("output", [7, 0, 9]), ("pool1", [0, 1, 2]),
    ]:
        values, grads = model.input_gradient(inputs, layer, units)
        assert values.shape == (3,) and grads.shape == (3, 28, 28)
        acts = model.activations_from_inputs(inputs, [layer])[layer]
        expected = np.array([acts[i, u].mean() for i, u in enumerate(units)])
        np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-9)
        # each item's gradient is its own: the same as a single-item call
        v1, g1 = model.input_gradient(inputs[1:2], layer, units[1:2])
        np.testing.assert_allclose(g1[0], grads[1], rtol=1e-6, atol=1e-9)
        for (r, c) in [(10, 12), (14, 14), (20, 7)]:
            bump = np.zeros_like(inputs)
            bump[0, r, c] = 1e-6
            plus, minus = (
                _objective(model, inputs + bump, layer, units[0]),
                _objective(model, inputs - bump, layer, units[0]),
            )
            assert (plus - minus) / 2e-6 == pytest.approx(grads[0, r, c], rel=1e-4, abs=1e-8)
    with pytest.raises(ConfigError, match="out of range"):
        model.input_gradient(inputs, "dense1", [0, 1, 12])


def test_input_gradient_split_across_threads_matches_the_plain_network():
    """On the CPU a batch of 32+ rows is split across threads (channels-last weights, the network
    stopped at the layer): values and gradients are those of autograd through the whole network."""
    model, rng = _model()
    inputs = model.to_inputs(rng.integers(0, 256, (40, 28, 28)).astype(np.uint8))
    units = rng.integers(0, 6, 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, grads = model.input_gradient(inputs, "conv2", units)
        assert torch.get_num_threads() == 2  # restored after the parts ran one thread each
    finally:
        torch.set_num_threads(threads)
    x = torch.from_numpy(inputs).requires_grad_(True)
    seen = {}
    handle = model.net.conv2.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    model.net.eval()
    model.net(x)
    handle.remove()
    expected = seen["out"][torch.arange(40), torch.from_numpy(units)].flatten(1).mean(1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    np.testing.assert_allclose(values, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads, expected_grad.numpy(), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.net.parameters())  # no weight gradients were made


def _objective(model, inputs, layer, unit):
    """Item 0's objective in float64, straight from the network (no float32 round trip)."""
    seen = {}
    handle = model.net._modules[layer].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model.net(torch.from_numpy(inputs[:1]))
    handle.remove()
    out = model.net.probabilities(seen["out"]) if layer == "output" else seen["out"]
    return float(out[0, unit].mean())


def _params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]


def _run(params, opt_step, steps=6):
    for i in range(steps):
        loss = sum(((p * (i + 1)) ** 2).sum() + p.sum() for p in params)
        for p in params:
            p.grad = None
        loss.backward()
        opt_step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    "kind, kwargs, reference",
    [
        (
            "sgd", {"momentum": 0.0, "weight_decay": 0.01},
            lambda ps: torch.optim.SGD(ps, lr=0.01, weight_decay=0.01),
        ),
        ("sgd", {"momentum": 0.9}, lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
        (
            "sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
            lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3),
        ),
        ("adam", {"weight_decay": 0.01}, lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01)),
        ("adamw", {"weight_decay": 0.05}, lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05)),
    ],
)
def test_sgd_and_adam_match_torch_optim(kind, kwargs, reference):
    ours = _params()
    opt = Optimizer(ours, kind, 0.01, **kwargs)
    got = _run(ours, opt.step)
    theirs = _params()
    ref = reference(theirs)
    want = _run(theirs, ref.step)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_follows_keras(momentum):
    """Keras 3: v = rho v + (1 - rho) g^2;  p -= lr g / sqrt(v + eps)  (momentum: m = mu m + that; p -= m)."""
    ours = _params()
    opt = Optimizer(ours, "rmsprop", 0.01, momentum=momentum)
    got = _run(ours, opt.step)
    ref = [p.detach().double().numpy().copy() for p in _params()]
    v = [np.zeros_like(p) for p in ref]
    m = [np.zeros_like(p) for p in ref]
    for i in range(6):
        for j, p in enumerate(ref):
            g = 2 * (i + 1) ** 2 * p + 1
            v[j] = 0.9 * v[j] + 0.1 * g * g
            inc = 0.01 * g / np.sqrt(v[j] + 1e-7)
            m[j] = momentum * m[j] + inc
            p -= m[j]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_bad_optimizer_settings():
    with pytest.raises(ConfigError, match="unknown optimizer 'adagrad'"):
        Optimizer(_params(), "adagrad", 0.1)
    with pytest.raises(ConfigError, match="--lr"):
        Optimizer(_params(), "sgd", -1.0)
    with pytest.raises(ConfigError, match="--nesterov needs"):
        Optimizer(_params(), "adam", 0.1, nesterov=True)


def test_schedules():
    one = Schedule.parse("onecycle", 1.0, 2, 50)
    lrs = [one.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert lrs[-1] == pytest.approx(1 / 25 / 1e4, rel=1e-3) and int(np.argmax(lrs)) in range(28, 31)
    cos = Schedule.parse("cosine", 2.0, 1, 10)
    assert (
        cos.lr_at(0) == 2.0
        and cos.lr_at(10) == pytest.approx(0.0, abs=1e-12)
        and cos.lr_at(5) == pytest.approx(1.0)
    )
    step = Schedule.parse("step:2:0.5", 1.0, 6, 10)
    assert [step.lr_at(e * 10) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert Schedule.parse("exponential:0.5", 1.0, 3, 10).lr_at(25) == 0.25
    plateau = Schedule.parse("plateau:1:0.1", 1.0, 9, 10)
    for loss in [1.0, 0.5, 0.6]:
        plateau.end_epoch(loss)
    assert plateau.lr_at(0) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="unknown schedule 'warp'"):
        Schedule.parse("warp", 1.0, 1, 1)
    assert math.isclose(Schedule.parse("constant", 0.3, 1, 1).lr_at(7), 0.3)


def test_one_channel_inputs_get_channels_last_strides_for_the_input_gradient():
    # contiguous(channels_last) leaves a one-channel batch's NCHW strides, so the first conv's output
    # (and the pooling after it) stayed NCHW; the restrided view is the same memory, channels-last.
    from mnistlab.cnn.model import channels_last_strides

    x, weight = torch.randn(4, 1, 28, 28), torch.randn(8, 1, 3, 3)
    plain = torch.nn.functional.conv2d(x.contiguous(memory_format=torch.channels_last), weight)
    assert not plain.is_contiguous(memory_format=torch.channels_last)
    restrided = channels_last_strides(x)
    assert restrided.data_ptr() == x.data_ptr() and torch.equal(restrided, x)
    out = torch.nn.functional.conv2d(restrided, weight)
    torch.testing.assert_close(out, plain)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    wide = torch.randn(2, 3, 5, 5)
    assert channels_last_strides(wide).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("spec", "crops"), [
    ("seed", {"conv1": (26, 26)}),  # pool1 drops conv2's 11th row and column, and conv1's 25th and 26th
    ("conv:4:3,bn,pool:2,conv:5:3,pool:3,flatten,output:10", {"pool1": (22, 22)}),  # bn: cut after it
    ("conv:4:3,pool:2,conv:5:3:pad=same,pool:2,flatten,output:10", {"pool2": (12, 12)}),
    ("conv:4:5:stride=2,avgpool:2,flatten,output:10", {"conv1": (27, 27)}),
    ("conv:4:3,pool:2,gap,output:10", {}),
])
def test_unread_rows_are_cut_with_the_same_outputs_and_gradients(spec, crops):
    """The rows and columns a floor-mode pooling drops are never computed: logits and every
    gradient match the network that computes them (float64: the same up to summation order)."""
    net = build_net(spec, init="glorot", seed=2).double()
    assert net.crops == crops
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    for channels_last in (False, True):
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.as_strided(x.shape, (784, 1, 28, 1))
        results = []
        for crop in (True, False):
            net.crop = crop
            net.zero_grad()
            out = net(x)
            out.square().sum().backward()
            results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
        for cut, whole in zip(*results):
            torch.testing.assert_close(cut, whole, rtol=1e-12, atol=1e-12)
    seen = {}
    handle = net.conv1.register_forward_hook(lambda _m, _i, out: seen.setdefault("conv1", out))
    net(x)
    handle.remove()
    assert seen["conv1"].shape[-2:] == net.infos[0].output_shape[1:]  # hooks see whole maps


def test_rmsprop_in_c_kernels_equals_the_foreach_update_bit_for_bit():
    """The CPU's RMSprop kernels (kernels.c, around torch's square root) against torch's foreach
    operations, on the seed network's channels-last parameters with gradients in both memory
    orders: the same state and parameters bit for bit, over steps whose gradients grow."""
    from mnistlab.cnn import native

    if native.library() is None:
        pytest.skip("no C compiler to build the kernel")

    def params():
        net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
        return list(net.parameters())

    fast, plain, start = params(), params(), params()
    fast_opt, plain_opt = Optimizer(fast, "rmsprop", 1e-3), Optimizer(plain, "rmsprop", 1e-3)
    assert fast_opt._native
    plain_opt._native = False
    generator = torch.Generator().manual_seed(0)
    for step in range(8):
        for a, b in zip(fast, plain):
            grad = torch.randn(a.shape, generator=generator) * (step + 1)
            if step % 2 and grad.dim() == 4:
                grad = grad.contiguous(memory_format=torch.channels_last)
            a.grad, b.grad = grad.clone(), grad.clone()
        fast_opt.step()
        plain_opt.step()
    for a, b in zip(fast_opt.state["v"], plain_opt.state["v"]):
        assert torch.equal(a, b)
    for a, b, before in zip(fast, plain, start):
        assert not torch.equal(a, before) and torch.equal(a, b)


def test_flatten_hands_a_channels_last_gradient_back_in_its_own_order():
    """The flat values are nn.Flatten's (NCHW order); the gradient goes back channels-last, so the
    ReLU and convolution before it see one memory order; the network's gradients are unchanged."""
    import torch.nn.functional as F
    from torch import nn

    from mnistlab.cnn.flatten import Flatten
    from mnistlab.cnn.model import channels_last_strides

    maps = torch.randn(4, 8, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    flat = Flatten()(maps)
    assert torch.equal(flat, nn.Flatten()(maps))
    numbered = torch.arange(flat.numel(), dtype=torch.float32)
    (grad,) = torch.autograd.grad(flat, [maps], numbered.view(flat.shape))
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    assert torch.equal(grad, numbered.view(maps.shape))
    net = build_net("seed", "glorot", seed=0).to(memory_format=torch.channels_last)
    x, y = channels_last_strides(torch.rand(6, 1, 28, 28)), torch.arange(6)
    results = []
    for module in (Flatten(), nn.Flatten()):
        net.flatten.flatten = module
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
        results.append(torch.autograd.grad(F.cross_entropy(logits.float(), y), list(net.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*results))
    with torch.no_grad():  # no gradient wanted: nn.Flatten's own forward
        assert torch.equal(Flatten()(maps), flat)
