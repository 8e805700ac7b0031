"""A 2x2 max pooling and the ReLU after it, of a channels-last bf16 map, in one pass of a small C
kernel (``pool_relu_bf16_*`` in ``kernels.c``): under bf16 autocast, the seed network's second
block (conv2, pool2, ReLU) pools and rectifies this way.

torch runs the two as separate operations: max_pool2d writes the pooled map and 64-bit indices of
the winners, the ReLU reads and writes the map again, and the backward zero-fills the input's
gradient, masks the pooled gradient and scatters it by the indices. The kernel keeps one byte per
output for which of the four positions won and writes each input gradient once. No value is
rounded (a bf16 maximum is one of its inputs), so the results equal torch's bit for bit, ties and
NaN included (a NaN output keeps its input's payload, where torch writes its own NaN): an exact
replacement, which cpu_probe times like the other kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from . import native


class _PoolRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        ph, pw = h // 2, w // 2
        out = x.new_empty((n, ph, pw, c))
        window = torch.empty((n, ph, pw, c), dtype=torch.uint8)
        native.call("pool_relu_bf16_forward", x, out, window, n, h, w, c, ph, pw)
        ctx.save_for_backward(out, window)
        ctx.size = (h, w)
        return out.permute(0, 3, 1, 2)  # (N, C, PH, PW), channels-last memory

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        out, window = ctx.saved_tensors
        n, ph, pw, c = out.shape
        h, w = ctx.size
        grad = grad.permute(0, 2, 3, 1).contiguous()  # a view when it is channels-last already
        grad_x = grad.new_empty((n, h, w, c))
        native.call("pool_relu_bf16_backward", grad, out, window, grad_x, n, h, w, c, ph, pw)
        return grad_x.permute(0, 3, 1, 2)


def pool_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(max_pool2d(x, 2)) for an ``x`` that ``usable`` accepts."""
    return _PoolRelu.apply(x)


def eligible(pooling: nn.Module, act: nn.Module) -> bool:
    """A 2x2 stride-2 max pooling without padding (winograd.poolable) followed by a ReLU."""
    from .winograd import poolable

    return poolable(pooling) and isinstance(act, nn.ReLU)


def usable(x: torch.Tensor) -> bool:
    """Inputs the kernel takes: a bf16 CPU map in channels-last memory, channels in blocks of LANES,
    where the kernel builds (a run resumed on a machine without a compiler keeps its recorded levers
    and runs torch's pooling and ReLU, the same values)."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
            and x.shape[1] % native.LANES == 0 and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[2] >= 2 and x.shape[3] >= 2 and native.library() is not None)
