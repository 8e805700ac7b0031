"""The first block of an MNIST CNN (a convolution of the one-channel image, a 2x2 max pooling and
a ReLU) in one pass of a small C kernel (``pooled_conv_*`` in ``kernels.c``).

A lever for float32 training on the CPU. With one input channel, oneDNN's convolution does next to
no arithmetic per byte: conv1 writes a 24x24x32 map per image that the pooling reads back, and the
backward zero-fills the same map, scatters the pooled gradient into it and reads it again for
the weight gradient. The kernel keeps each pooling window's four sums in registers, writes only
the pooled output and which position won, and forms the weight gradient from the pooled gradient
(docs/performance.md, "AVX2 class").

Compiled on first use (native.py); like Winograd, it is a candidate that ``cpu_probe`` times on
the run's network and that ``Net.pooled_conv`` switches on. The input gets no gradient (the
image's), so blocks whose input needs one run as written. Under bf16 autocast the block still runs
in float32 (the kernel's only arithmetic) and autocast casts its small pooled output for the next
convolution: oneDNN's bf16 first block moves as many bytes per image as its float32 one.
"""

from __future__ import annotations

import torch
from torch import nn

from . import native

MAX_TAPS = 49  # taps per kernel (kernels.c)


class _PooledConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, _, h, w = x.shape
        o, k = weight.shape[0], weight.shape[-1]
        ph, pw = (h - k + 1) // 2, (w - k + 1) // 2
        image = x.reshape(n, h, w).contiguous()
        taps = weight.detach().reshape(o, k * k).t().contiguous()
        out = x.new_empty((n, ph, pw, o))
        window = torch.empty((n, ph, pw, o), dtype=torch.uint8)
        native.call("pooled_conv_forward", image, taps, bias.detach().contiguous(), out, window,
                    n, h, w, k, o, ph, pw)
        ctx.save_for_backward(image, out, window)
        ctx.kernel = k
        return out.permute(0, 3, 1, 2)  # (N, O, PH, PW), channels-last memory

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        image, out, window = ctx.saved_tensors
        k = ctx.kernel
        n, h, w = image.shape
        _, ph, pw, o = out.shape
        grad = grad.permute(0, 2, 3, 1).contiguous()  # a view when it is channels-last already
        taps_grad = grad.new_empty((k * k, o))
        bias_grad = grad.new_empty(o)
        native.call("pooled_conv_backward", image, grad, out, window, taps_grad, bias_grad,
                    n, h, w, k, o, ph, pw)
        return None, taps_grad.t().reshape(o, 1, k, k), bias_grad


def conv_pool_relu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """relu(max_pool2d(conv(x), 2)) for a block ``eligible`` says the kernel takes."""
    bias = conv.bias if conv.bias is not None else x.new_zeros(conv.out_channels)
    return _PooledConv.apply(x, conv.weight, bias)


def eligible(conv: nn.Module, pooling: nn.Module, act: nn.Module) -> bool:
    """A convolution the kernel computes: one input channel, square, stride 1, undilated, no
    padding, float32, followed by a 2x2 stride-2 max pooling and a ReLU."""
    from .winograd import poolable

    return (
        isinstance(conv, nn.Conv2d)
        and conv.in_channels == 1
        and conv.out_channels % native.LANES == 0
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.kernel_size[0] ** 2 <= MAX_TAPS
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding in (0, (0, 0))
        and conv.weight.dtype == torch.float32
        and poolable(pooling)
        and isinstance(act, nn.ReLU)
    )


def usable(x: torch.Tensor) -> bool:
    """Inputs the kernel takes at run time: float32 on the CPU, no gradient wanted for them (with
    or without autocast: the kernel computes in float32 either way), where the kernel builds (a run
    resumed on a machine without a compiler keeps its recorded levers and runs as written)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
            and native.library() is not None)
