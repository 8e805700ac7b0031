"""3x3 convolutions by Winograd's minimal filtering F(m x m, 3 x 3).

A lever for float32 on CPUs whose oneDNN has no Winograd kernels of its own (AVX2: oneDNN's exist
only for AVX-512): a 3x3 convolution becomes (m + 2)^2 batched matrix products over tiles of the
input, which need 2.25x (m = 2) to 4x (m = 4) fewer multiplications than the direct convolution,
plus linear transforms before and after. In float32, where the C kernels build (native.py), the
transforms are one pass each over channels-last memory (``winograd_*`` in kernels.c: the tiles
gathered and transformed at once, the pooled max and bias with the output transform); elsewhere
they are torch matrix products that autograd differentiates, with a backward of their own only
for the gathering of overlapping tiles. The batched products run in torch (MKL) either way.

With m = 2 and a 2x2 max pooling after the convolution (``pool=True``), each output tile is one
pooling window: the pooling is a max over the tile's four values, and outputs the pooling would
drop are never computed.

Whether it pays depends on the CPU and the layer, so ``cpu_probe`` times it against the plain
convolution on the run's network and ``Net.winograd`` switches it on per layer
(docs/performance.md, "AVX2 class"). Results differ from the direct convolution by float32
rounding only (tests compare values and gradients).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from . import native

KERNEL = 3
TILES = (2, 3, 4)  # output tile sizes m with well-conditioned transforms in float32
# Below this many input channels the products have next to no depth and the transforms cost more
# than they save (one input channel, measured on AVX2: docs/performance.md), so no candidate.
THIN = 8
# interpolation points of the Cook-Toom construction, the usual well-conditioned ones (then infinity)
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)


@functools.cache
def matrices(m: int, r: int = KERNEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AT, G, BT) of F(m, r) in float64: y = AT @ ((G @ g) * (BT @ d)) is the valid correlation of
    the m + r - 1 inputs d with the r taps g. AT and G come from the points; BT is solved for."""
    n = m + r - 1
    points = np.array(_POINTS[: n - 1])
    at = np.zeros((m, n))
    at[:, : n - 1] = points[None, :] ** np.arange(m)[:, None]
    at[m - 1, n - 1] = 1.0
    scale = np.array([1.0 / np.prod([p - q for q in points if q != p]) for p in points])
    g = np.zeros((n, r))
    g[: n - 1] = scale[:, None] * points[:, None] ** np.arange(r)[None, :]
    g[n - 1, r - 1] = 1.0
    # sum_j AT[i,j] G[j,k] BT[j,l] = [l == i + k] for every output i, tap k and input l
    lhs = np.einsum("ij,jk->ikj", at, g).reshape(m * r, n)
    rhs = np.zeros((m * r, n))
    for i in range(m):
        for k in range(r):
            rhs[i * r + k, i + k] = 1.0
    bt = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    if not np.allclose(lhs @ bt, rhs, atol=1e-9):
        raise ValueError(f"no Winograd transform F({m}, {r}) from these points")
    return at, g, np.round(bt, 12)


@functools.cache
def _kron(m: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms as single matrices on row-major flattened tiles (kron(X, X))."""
    at, g, bt = matrices(m)
    return tuple(torch.from_numpy(np.kron(x, x)).to(dtype) for x in (at, g, bt))  # type: ignore[return-value]


class _Tiles(torch.autograd.Function):
    """The (m + 2) x (m + 2) input tiles at stride m, overlapping by 2: (a, a, N, th, tw, C) from
    an (N, C, H, W) map of any layout. The backward adds each tile's gradient back in place; tiles
    split into row and column groups of m never overlap within a group, so each group is one add."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: int, th: int, tw: int) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        a = m + 2
        sn, sc, sh, sw = x.stride()
        view = x.as_strided((a, a, n, th, tw, c), (sh, sw, sn, m * sh, m * sw, sc), x.storage_offset())
        ctx.geometry = (n, c, h, w, m, th, tw)
        return view.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        n, c, h, w, m, th, tw = ctx.geometry
        a = m + 2
        dx = grad.new_zeros((n, h, w, c))  # channels-last memory
        for qa in range(0, a, m):
            sa = min(m, a - qa)
            for qb in range(0, a, m):
                sb = min(m, a - qb)
                target = dx.as_strided(
                    (sa, sb, n, th, tw, c), (w * c, c, h * w * c, m * w * c, m * c, 1), (qa * w + qb) * c
                )
                target.add_(grad[qa : qa + sa, qb : qb + sb])
        return dx.permute(0, 3, 1, 2), None, None, None


class _WindowMax(torch.autograd.Function):
    """The max over the leading dimension (a pooling window's values), with max pooling's gradient:
    all of it to the first maximum. (``max(0)`` does the same several times slower; ``amax``
    would split ties, which all-zero input regions make common.)"""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = y.amax(0)
        ctx.save_for_backward(y, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        y, out = ctx.saved_tensors
        first = y == out
        taken = first[0].clone()
        for k in range(1, len(first)):
            first[k] &= ~taken
            taken |= first[k]
        return first.to(grad.dtype).mul_(grad)


@functools.cache
def _float_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(AT, BT) in float32 for the C kernels (``winograd_*`` in kernels.c). Pass them through
    ``native.call``: when a split batch's parts call this at once, only one result is cached, and a
    bare ``_float_matrices(m)[0].data_ptr()`` could point into memory freed before the kernel runs."""
    at, _, bt = matrices(m)
    return torch.from_numpy(at).float().contiguous(), torch.from_numpy(bt).float().contiguous()


class _NativeInput(torch.autograd.Function):
    """BT d B of every tile (a C kernel), (a * a, N * th * tw, C) from an (N, C, H, W) map."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: int, th: int, tw: int) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        a = m + 2
        pixels = x.permute(0, 2, 3, 1).contiguous()  # a view for a channels-last map
        u = x.new_empty((a * a, n * th * tw, c))
        native.call("winograd_input", pixels, _float_matrices(m)[1], u, n, h, w, c, m, th, tw)
        ctx.geometry = (n, c, h, w, m, th, tw)
        return u

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        n, c, h, w, m, th, tw = ctx.geometry
        dx = grad.new_empty((n, h, w, c))
        native.call("winograd_input_backward", grad.contiguous(), _float_matrices(m)[1], dx,
                    n, h, w, c, m, th, tw)
        return dx.permute(0, 3, 1, 2), None, None, None


class _NativeOutput(torch.autograd.Function):
    """AT M A of every tile plus the bias (a C kernel): with ``pool``, each tile's max, (N, th, tw,
    O); without, the (N, oh, ow, O) map."""

    @staticmethod
    def forward(ctx, products: torch.Tensor, bias: torch.Tensor, m: int, geometry: tuple,  # type: ignore[override]
                pool: bool) -> torch.Tensor:
        n, th, tw, oh, ow = geometry
        o = products.shape[-1]
        out = products.new_empty((n, th, tw, o) if pool else (n, oh, ow, o))
        window = torch.empty(out.shape if pool else (0,), dtype=torch.uint8)
        native.call("winograd_output", products, _float_matrices(m)[0], bias.detach().contiguous(),
                    out, window, n, o, m, th, tw, oh, ow, int(pool))
        ctx.save_for_backward(window)
        ctx.geometry, ctx.m, ctx.pool = geometry, m, pool
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (window,) = ctx.saved_tensors
        n, th, tw, oh, ow = ctx.geometry
        m, a = ctx.m, ctx.m + 2
        grad = grad.contiguous()
        o = grad.shape[-1]
        dproducts = grad.new_empty((a * a, n * th * tw, o))
        native.call("winograd_output_backward", grad, window, _float_matrices(m)[0], dproducts,
                    n, o, m, th, tw, oh, ow, int(ctx.pool))
        return dproducts, grad.view(-1, o).sum(0), None, None, None


def _native(x: torch.Tensor, conv: nn.Conv2d, m: int, pool: bool) -> bool:
    return (x.dtype == torch.float32 and x.device.type == "cpu" and m + 2 <= 6 and (m == 2 or not pool)
            and conv.in_channels % native.LANES == 0 and conv.out_channels % native.LANES == 0
            and not torch.is_autocast_enabled("cpu") and native.library() is not None)


def conv2d(x: torch.Tensor, conv: nn.Conv2d, m: int, pool: bool = False) -> torch.Tensor:
    """``conv(x)`` for a 3x3, stride-1 convolution (with ``pool``: followed by a 2x2 max pooling of
    stride 2, m = 2), by Winograd F(m x m, 3 x 3). Returns an (N, O, H', W') channels-last tensor."""
    if conv.padding != (0, 0):
        x = nn.functional.pad(x, (conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0]))
    n, _, h, w = x.shape
    out_h, out_w = h - KERNEL + 1, w - KERNEL + 1
    if pool:
        out_h, out_w = out_h // 2 * 2, out_w // 2 * 2
    th, tw = math.ceil(out_h / m), math.ceil(out_w / m)
    if th * m + 2 > h or tw * m + 2 > w:  # the last tiles reach past the map: zeros there
        x = nn.functional.pad(x, (0, tw * m + 2 - w, 0, th * m + 2 - h))
    a = m + 2
    weight = conv.weight
    kat, kg, kbt = (t.to(weight.device) for t in _kron(m, weight.dtype))
    out_ch, in_ch = weight.shape[:2]
    v = (kg @ weight.permute(2, 3, 1, 0).reshape(KERNEL * KERNEL, in_ch * out_ch)).view(a * a, in_ch, out_ch)
    if _native(x, conv, m, pool):  # the transforms as C kernels, one pass each
        bias = conv.bias if conv.bias is not None else weight.new_zeros(out_ch)
        y = _NativeOutput.apply(torch.bmm(_NativeInput.apply(x, m, th, tw), v), bias, m,
                                (n, th, tw, out_h, out_w), pool)
        return y.permute(0, 3, 1, 2)
    d = _Tiles.apply(x, m, th, tw).view(a * a, -1)
    u = (kbt @ d).view(a * a, -1, in_ch)
    y = kat @ torch.bmm(u, v).view(a * a, -1)  # (m * m, N * th * tw * O)
    if pool:
        y = _WindowMax.apply(y.view(m * m, -1)).view(n, th, tw, out_ch)
    else:
        y = y.view(m, m, n, th, tw, out_ch).permute(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, out_ch)
        y = y[:, :out_h, :out_w].contiguous()  # (a reshape of single tiles may be a strided view)
    if conv.bias is not None:
        y = y + conv.bias
    return y.permute(0, 3, 1, 2)


def eligible(conv: nn.Module) -> bool:
    """A convolution worth a candidate: 3x3, stride 1, undilated, ungrouped, zero padding, and
    input channels enough for the products to have depth."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.in_channels >= THIN
        and conv.kernel_size == (KERNEL, KERNEL)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def poolable(pooling: nn.Module) -> bool:
    """A max pooling the m = 2 tiles can take over: 2x2, stride 2, no padding, floor mode."""
    return (
        isinstance(pooling, nn.MaxPool2d)
        and pooling.kernel_size in (2, (2, 2))
        and pooling.stride in (2, (2, 2))
        and pooling.padding in (0, (0, 0))
        and pooling.dilation in (1, (1, 1))
        and not pooling.ceil_mode
    )


def tile_for(out_h: int, out_w: int, pool: bool) -> int:
    """The tile size with the fewest transformed values for this output (m = 2 with a pooling)."""
    if pool:
        return 2
    return min(TILES, key=lambda m: (math.ceil(out_h / m) * math.ceil(out_w / m) * (m + 2) ** 2, m))
