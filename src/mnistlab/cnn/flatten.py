"""Flatten for channels-last maps whose gradient goes back in the maps' own memory order.

``nn.Flatten`` of a channels-last map copies it into NCHW order (the order the dense layer's
weights read), and its backward hands back the gradient as an NCHW view. The ReLU before the
flatten then compares an NCHW gradient with its channels-last output, and torch's elementwise
kernels take a slow path for two memory orders (several times the time of the same operation in
one); the convolution before it reorders the gradient once more. Here the backward copies the
small flat gradient into channels-last order once, so everything before it sees one order
(docs/performance.md, "The bf16 step, part by part").
"""

from __future__ import annotations

import torch
from torch import nn


class _Flatten(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``nn.Flatten`` (N, C, H, W) -> (N, C*H*W): the same values; for a channels-last map that
    needs a gradient, the gradient comes back channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a trace (ONNX export) records no gradient; channels-last and not contiguous also means
        # four dimensions and more than one channel, with no shape read (a trace would warn)
        needs_grad = x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing()
        if needs_grad and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return _Flatten.apply(x)
        return super().forward(x)
