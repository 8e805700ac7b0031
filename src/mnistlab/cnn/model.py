"""The torch network built from a Spec, and the CNN InspectableModel around it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.preprocess import Preprocessor
from ..errors import ConfigError, RunError
from ..model_api import InspectableModel
from . import native, pool_relu, pooled_conv, winograd
from .activations import ACTIVATIONS
from .spec import LayerInfo, Spec, infer_shapes, parse_spec, summary_table

INITS = ("glorot", "default")
_MIN_PART = 16  # rows per thread below which splitting an input-gradient batch does not pay


def channels_last_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels-last order. With one channel, ``contiguous(channels_last)``
    keeps the NCHW strides (both orders are the same memory), so oneDNN would give the first conv's
    output, and the pooling after it, the slower NCHW layout; this restrides without copying."""
    if x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    return x.contiguous().as_strided((n, c, h, w), (h * w, 1, w, 1))


def _crop(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The top-left rows x cols of each map, in ``x``'s layout (stride 1 between channels:
    channels-last, also for one channel), as a dense tensor for oneDNN."""
    part = x[:, :, :rows, :cols]
    if x.stride(1) == 1:
        return channels_last_strides(part)
    return part.contiguous()


class Net(nn.Module):
    """A fold over named blocks; each block is one spec layer plus its batch norm, activation, dropout.

    Every block comes from its layer kind (``layers.py``). ``forward`` returns logits; the ``output``
    activation (softmax or sigmoid) is applied by the loss during training and by ``probabilities``
    for inspection.
    """

    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        self.infos: list[LayerInfo] = infer_shapes(spec)
        self.names: list[str] = []
        blocks: dict[str, nn.Sequential] = {}
        for info in self.infos:
            if info.kind.attached:  # bn / dropout: part of the block it follows
                info.kind.attach(blocks[self.names[-1]], info)
                continue
            blocks[info.name] = info.kind.build(info)
            self.names.append(info.name)
        for name in self.names:
            self.add_module(name, blocks[name])
        kinds = {info.name: info.kind for info in self.infos}
        # A block ending in ReLU followed by a kind that commutes with it (max pooling) runs its
        # ReLU after the pooling: the same values and gradients, on a fraction of the elements.
        self.pool_first = {
            name: following
            for name, following in zip(self.names, self.names[1:])
            if list(blocks[name]._modules)[-1] == "act" and isinstance(blocks[name].act, nn.ReLU)
            and kinds[following].commutes_with_relu
        }
        # the modules each fused pair runs, resolved once: (before the ReLU, the pooling, the ReLU)
        self._fused = {
            name: ([m for key, m in blocks[name]._modules.items() if key != "act"],
                   list(blocks[following]._modules.values()), blocks[name].act)
            for name, following in self.pool_first.items()
        }
        # the fused pairs whose following block is the max pooling alone (no dropout attached to
        # it): only their pooling may a kernel take over (pooled_conv, Winograd's pooled tiles,
        # pool_relu), which would skip whatever else that block runs
        self._pooling_alone = {name for name, (_, pooling, _) in self._fused.items() if len(pooling) == 1}
        self.fuse_pooling = True
        # block -> (rows, cols) of its input that the logits depend on; the rest is cut off first
        self.crops = self._crops(blocks)
        self.crop = True  # off: every block computes all of its output (export, comparisons)
        # blocks whose convolution runs as Winograd F(m x m, 3 x 3): name -> m (a CPU lever that
        # cpu_probe times; empty: every convolution runs as torch's Conv2d)
        self.winograd: dict[str, int] = {}
        # blocks whose conv, pooling and ReLU run as one C kernel (pooled_conv: a CPU lever, timed
        # by cpu_probe like Winograd)
        self.pooled_conv: set[str] = set()
        # blocks whose following max pooling and ReLU run as one C kernel on a bf16 map (pool_relu:
        # exact, timed by cpu_probe under bf16 autocast)
        self.pool_relu: set[str] = set()

    def _crops(self, blocks: dict[str, nn.Sequential]) -> dict[str, tuple[int, int]]:
        """Where a floor-mode pooling or a valid convolution leaves the bottom rows or right
        columns of its input unread (the seed's pool1 drops conv2's 11th output row and column, and
        with it conv1's 25th and 26th), the blocks before it need not compute them: the blocks
        whose input to cut, walking back from the output. A block with batch norm or dropout
        computes all of its output (statistics and random draws would change): it is cut after."""
        infos = {info.name: info for info in self.infos}
        plan: dict[str, tuple[int, int]] = {}
        need, later = None, None
        for name in reversed(self.names):
            info = infos[name]
            extent = None
            if len(info.output_shape) == 3 and all(key in ("pad", "conv", "act", "pool")
                                                   for key in blocks[name]._modules):
                rows, cols = need or info.output_shape[1:]
                extent = info.kind.input_extent(info.layer, info, rows, cols)
            if extent is None and need is not None:
                plan[later] = need  # this block reads all its input: cut its output instead
            need = extent if extent is not None and extent != tuple(info.input_shape[1:]) else None
            later = name
        if need is not None:
            plan[later] = need
        return plan

    def winograd_plan(self) -> dict[str, int]:
        """The blocks winograd.conv2d can run (a 3x3 conv and its activation, nothing else), each
        with its tile size: 2 where a 2x2 max pooling follows (the tile is the pooling window)."""
        plan = {}
        for info in self.infos:
            block = self._modules.get(info.name)
            if block is None or list(block._modules) != ["conv", "act"] or not winograd.eligible(block.conv):
                continue
            pooled = info.name in self._pooling_alone and winograd.poolable(self._fused[info.name][1][0])
            plan[info.name] = winograd.tile_for(*info.output_shape[1:], pooled)
        return plan

    def pooled_conv_plan(self) -> list[str]:
        """The blocks pooled_conv can run (a one-channel conv, its ReLU and the max pooling run
        before it), where the kernel can be built on this machine."""
        plan = [name for name, (before, pooling, act) in self._fused.items()
                if name in self._pooling_alone and list(self._modules[name]._modules) == ["conv", "act"]
                and pooled_conv.eligible(before[0], pooling[0], act)]
        return plan if plan and native.library() is not None else []

    def pool_relu_plan(self) -> list[str]:
        """The blocks whose following pooling and ReLU pool_relu can run (a 2x2 max pooling alone
        in its block, a ReLU), where the kernel can be built on this machine."""
        plan = [name for name, (_, pooling, act) in self._fused.items()
                if name in self._pooling_alone and pool_relu.eligible(pooling[0], act)]
        return plan if plan and native.library() is not None else []

    def forward(self, x: torch.Tensor, until: str | None = None) -> torch.Tensor:
        """Logits; with ``until``, the output of that block, and no block after it runs."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        modules = self._modules
        skip = None
        crops = self.crops if self.crop and until is None and not self._hooked() else {}
        for name in self.names:
            if name == skip:
                continue
            if name in crops:
                x = _crop(x, *crops[name])
            block = modules[name]
            following = self.pool_first.get(name) if self.fuse_pooling and name != until else None
            tile = self.winograd.get(name) if not block._forward_hooks else None
            # hooks (inspection) must see each block's own output, so hooked blocks run as written
            if following is not None and not (block._forward_hooks or modules[following]._forward_hooks):
                before, pooling, act = self._fused[name]
                alone = name in self._pooling_alone  # asked here too: a resumed run keeps its levers
                if alone and name in self.pooled_conv and pooled_conv.usable(x):
                    x = pooled_conv.conv_pool_relu(x, before[0])
                elif alone and tile == 2 and winograd.poolable(pooling[0]):
                    x = act(winograd.conv2d(x, before[0], tile, pool=True))
                else:
                    if tile:
                        x = winograd.conv2d(x, before[0], tile)
                    else:
                        for module in before:
                            x = module(x)
                    if following in crops:
                        x = _crop(x, *crops[following])
                    if alone and name in self.pool_relu and pool_relu.usable(x):
                        x = pool_relu.pool_relu(x)
                    else:
                        for module in pooling:
                            x = module(x)
                        x = act(x)
                skip = following
                if following == until:
                    return x
            elif tile:
                x = block.act(winograd.conv2d(x, block.conv, tile))
            else:
                x = block(x)
            if name == until:
                return x
        return x  # (N, classes) logits

    def _hooked(self) -> bool:
        """Whether any block has a forward hook (inspection), which must see whole maps."""
        return any(self._modules[name]._forward_hooks for name in self.names)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.spec.output_activation].module()(logits)


def init_weights(net: Net, init: str) -> None:
    """'glorot' as Keras does (Glorot-uniform kernels, zero biases); 'default' keeps torch's init."""
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if init == "default":
        return
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight = module.weight
                receptive = weight[0][0].numel() if weight.dim() > 2 else 1
                fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                weight.uniform_(-bound, bound)
                if module.bias is not None:
                    module.bias.zero_()


def build_net(spec: Spec | str, init: str = "default", seed: int | None = None) -> Net:
    spec = parse_spec(spec)
    if seed is not None:
        torch.manual_seed(seed)
    net = Net(spec)
    init_weights(net, init)
    return net


def state_to_numpy(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", copy=True).contiguous().numpy() for k, v in net.state_dict().items()}


def load_numpy_state(net: nn.Module, arrays: dict[str, np.ndarray], where: str = "weights") -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise RunError(f"{where}: lacks {missing[0]!r} for this spec; the weights belong to another network")
    for key, value in expected.items():
        if tuple(arrays[key].shape) != tuple(value.shape):
            raise RunError(
                f"{where}: {key} has shape {arrays[key].shape}, the spec needs {tuple(value.shape)}"
            )
    net.load_state_dict({k: torch.from_numpy(np.array(arrays[k])) for k in expected}, strict=True)


class CNN(InspectableModel):
    """A trained (or freshly built) CNN with its preprocessing: the analysis interface.

    Activations come from forward hooks on the named blocks, after each block's nonlinearity;
    ``output`` is the class probabilities. Conv and pool maps are (N, C, H, W), dense (N, units).
    """

    kind = "cnn"

    def __init__(
        self, spec: Spec | str, preprocess: Preprocessor, net: Net | None = None, device: str = "cpu"
    ):
        self.spec = parse_spec(spec)
        self.preprocess = preprocess
        self.net = (net if net is not None else Net(self.spec)).to(device).eval()
        self.device = torch.device(device)
        # small enough that a batch's largest maps stay in the CPU's caches (docs/performance.md)
        self.batch_size = 256

    @classmethod
    def from_run(cls, record: Any) -> CNN:
        config = record.config
        if "spec" not in config:
            raise RunError(f"{record.path}: the manifest has no CNN spec; the run is not a CNN run")
        try:
            spec = parse_spec(config["spec"])
        except ConfigError as exc:
            raise RunError(f"{record.path}: stored spec is invalid ({exc})") from None
        net = Net(spec)
        load_numpy_state(net, record.weights, f"{record.path}/weights.npz")
        return cls(spec, Preprocessor.from_arrays(record.preprocess), net)

    def layer_names(self) -> list[str]:
        return list(self.net.names)

    def layer_roles(self) -> dict[str, str]:
        return {info.name: info.kind.role for info in self.net.infos if not info.kind.attached}

    def summary(self) -> str:
        return summary_table(self.spec)

    def _as_tensor(self, inputs: np.ndarray) -> torch.Tensor:
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim == 2:
            inputs = inputs[None]
        expected = tuple(self.spec.input_shape[1:])
        if inputs.ndim != 3 or inputs.shape[1:] != expected:
            raise ConfigError(
                f"expected inputs of shape (N, {expected[0]}, {expected[1]}), got {inputs.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)

    def activations_from_inputs(self, inputs: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        layers = self.check_layers(layers)
        x_all = self._as_tensor(inputs)
        wanted = set(layers)
        # One float32 array per layer, allocated once; each batch is copied straight into its slice
        # (channels-last converted on the way), so the maps are written once, never concatenated.
        results = {name: np.empty((len(x_all), *self._shape(name)), np.float32) for name in layers}
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self.net._modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out)
            )
            for name in wanted
        ]
        self.net.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(x_all), self.batch_size):
                    captured.clear()
                    batch = x_all[start : start + self.batch_size]
                    self.net(batch)
                    for name in layers:
                        out = captured[name]
                        if name == "output":
                            out = self.net.probabilities(out)
                        torch.from_numpy(results[name][start : start + len(batch)]).copy_(out)
        finally:
            for handle in handles:
                handle.remove()
        return results

    def _detached_params(self, channels_last: bool) -> dict[str, torch.Tensor]:
        """The weights without autograd (the input gradient needs none of theirs); on the CPU
        in channels-last order, which runs oneDNN's convolutions without reorders and ATen's
        vectorized pooling."""
        params = {name: p.detach() for name, p in self.net.named_parameters()}
        if channels_last:
            params = {name: p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p
                      for name, p in params.items()}
        params.update(dict(self.net.named_buffers()))
        return params

    def _unit_gradients(self, x: torch.Tensor, layer: str, rows: torch.Tensor, idx: torch.Tensor,
                        params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's unit value (a map's mean, or a node) and its gradient with respect to the row's
        input."""
        x = x.detach().unsqueeze(1).clone()  # (N, 1, 28, 28)
        if x.device.type == "cpu":
            x = channels_last_strides(x)
        x.requires_grad_(True)
        with torch.enable_grad():
            # nothing after the layer runs
            out = torch.func.functional_call(self.net, params, (x,), {"until": layer})
            if layer == "output":
                out = self.net.probabilities(out)
            picked = out[rows, idx]  # (N,) for dense, (N, H, W) for maps
            values = picked.flatten(1).mean(1) if picked.dim() > 1 else picked
            (grad,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), grad[:, 0]

    def _split_unit_gradients(self, x: torch.Tensor, layer: str, rows: torch.Tensor,
                              idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On the CPU the rows are independent: split them across threads, one torch thread each.
        Small convolutions gain little from torch's own threads, whose barriers stall whenever
        another process holds a core; a part per thread has no barriers at all."""
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        parts = max(1, min(threads, len(x) // _MIN_PART))
        params = self._detached_params(channels_last=True)
        if parts == 1:
            return self._unit_gradients(x, layer, rows, idx, params)
        bounds = np.linspace(0, len(x), parts + 1).astype(int)
        jobs = [(slice(a, b), torch.arange(b - a)) for a, b in itertools.pairwise(bounds)]
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(parts - 1, thread_name_prefix="mnistlab-oip") as pool:
                others = [
                    pool.submit(self._unit_gradients, x[sl], layer, r, idx[sl], params) for sl, r in jobs[1:]
                ]
                sl, r = jobs[0]
                results = [self._unit_gradients(x[sl], layer, r, idx[sl], params)]
                results += [f.result() for f in others]
        finally:
            torch.set_num_threads(threads)
        return torch.cat([v for v, _ in results]), torch.cat([g for _, g in results])

    def _shape(self, name: str) -> tuple[int, ...]:
        for info in self.net.infos:
            if info.name == name:
                return info.output_shape
        raise ConfigError(f"unknown layer {name!r}")

    def input_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        (layer,) = self.check_layers([layer])
        x = self._as_tensor(inputs)
        units_arr = np.asarray(units, dtype=np.int64).reshape(-1)
        if len(units_arr) != len(x):
            raise ConfigError(f"got {len(units_arr)} units for {len(x)} inputs; give one unit per input")
        width = self._shape(layer)[0]
        if len(units_arr) and (units_arr.min() < 0 or units_arr.max() >= width):
            raise ConfigError(
                f"unit {int(units_arr.max() if units_arr.max() >= width else units_arr.min())} is out of "
                f"range for {layer} (0..{width - 1})"
            )
        self.net.eval()
        rows = torch.arange(len(x), device=x.device)
        idx = torch.from_numpy(units_arr).to(x.device)
        if x.device.type != "cpu" or len(x) < 2 * _MIN_PART:
            params = self._detached_params(x.device.type == "cpu")
            values, grad = self._unit_gradients(x, layer, rows, idx, params)
        else:
            values, grad = self._split_unit_gradients(x, layer, rows, idx)
        return (values.detach().cpu().numpy().astype(np.float32, copy=False),
                grad.detach().cpu().numpy().astype(np.float32, copy=False))

    def layer_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray, wrt: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``input_gradient`` objective's gradient w.r.t. the activations of block ``wrt`` (at or
        below ``layer``), with those activations: values (N,), activations and gradients, (N, C, H, W)
        for maps, (N, units) for dense layers."""
        layer, wrt = self.check_layers([layer, wrt])
        if self.net.names.index(wrt) > self.net.names.index(layer):
            raise ConfigError(
                f"layer {wrt!r} comes after {layer!r}; the gradient needs a layer at or below it"
            )
        units_arr = np.asarray(units, dtype=np.int64).reshape(-1)
        x = self._as_tensor(inputs).clone().requires_grad_(True)  # a graph even if the weights are frozen
        width = self._shape(layer)[0]
        if len(units_arr) != len(x) or (
            len(units_arr) and not 0 <= units_arr.min() <= units_arr.max() < width
        ):
            raise ConfigError(
                f"give one unit per input, each in 0..{width - 1} for {layer}; got {len(units_arr)} for "
                f"{len(x)}"
            )
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self.net._modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out)
            )
            for name in {layer, wrt}
        ]
        self.net.eval()
        try:
            with torch.enable_grad():
                self.net(x)
                if "output" in captured:  # the output block gives logits; its activations are probabilities
                    captured["output"] = self.net.probabilities(captured["output"])
                picked = captured[layer][
                    torch.arange(len(x), device=x.device), torch.from_numpy(units_arr).to(x.device)
                ]
                values = (
                    picked.flatten(1).mean(1) if picked.dim() > 1 else picked
                )  # a map's objective is its mean
                (grad,) = torch.autograd.grad(values.sum(), captured[wrt])
        finally:
            for handle in handles:
                handle.remove()
        return tuple(
            t.detach().cpu().numpy().astype(np.float32, copy=False) for t in (values, captured[wrt], grad)
        )

    def layers_with_weights(self) -> list[str]:
        return [name for name in self.net.names if any(True for _ in self.net._modules[name].parameters())]

    def with_random_weights(self, layers, seed: int = 0) -> CNN:
        names = self.check_layers(list(layers))
        with torch.random.fork_rng(devices=[]):  # the caller's torch random stream stays where it was
            net = Net(self.spec)
            fresh = build_net(self.spec, seed=seed)
        net.load_state_dict(self.net.state_dict())
        for name in names:
            net._modules[name].load_state_dict(fresh._modules[name].state_dict())
        return CNN(self.spec, self.preprocess, net, device=str(self.device))
