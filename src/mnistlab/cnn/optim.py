"""Optimizers and learning-rate schedules, written for a resident-data training loop.

The optimizers keep the learning rate and step count as device tensors, so a whole training step
(forward, backward, update) can be captured in a CUDA graph and the schedule can still change the
rate between replays. RMSprop follows Keras 3 exactly (``p -= lr * g / sqrt(v + eps)``, eps inside
the square root, rho=0.9, eps=1e-7), which torch.optim.RMSprop does not (it adds eps outside).
SGD and Adam/AdamW follow torch.optim's update rules (tested against them).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import native

OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine", "onecycle", "plateau")


class Optimizer:
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        kind: str,
        lr: float,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        rho: float = 0.9,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ):
        if kind not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"--lr {lr} must be a positive number")
        if not 0 <= momentum < 1:
            raise ConfigError(f"--momentum {momentum} must be in [0, 1)")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ConfigError(f"--weight-decay {weight_decay} must be >= 0")
        if nesterov and (kind != "sgd" or momentum <= 0):
            raise ConfigError("--nesterov needs --optimizer sgd and a --momentum > 0")
        self.params = [p for p in params if p.requires_grad]
        self.kind = kind
        self.momentum = float(momentum)
        self.nesterov = nesterov
        self.weight_decay = float(weight_decay)
        self.rho = rho
        self.eps = eps if eps is not None else (1e-7 if kind == "rmsprop" else 1e-8)
        self.betas = betas
        device = self.params[0].device
        # RMSprop without momentum on the CPU runs as C kernels where they build (rmsprop_* in
        # kernels.c): the five passes per tensor below are each a dispatch that costs more than the
        # arithmetic of these small tensors
        self._native = kind == "rmsprop" and not self.momentum and all(map(_dense_float32_cpu, self.params))
        self._denom: list[torch.Tensor] = []  # the kernels' sqrt(v + eps), allocated once
        # pointers to the buffers this optimizer owns (its state only ever changes in place) and the
        # sizes, built once; the parameters' and gradients' are taken every step
        self._owned: tuple[ctypes.Array, ctypes.Array, ctypes.Array] | None = None
        self.lr = torch.tensor(float(lr), device=device)  # changed in place by the schedule
        self.t = torch.zeros((), device=device)  # steps taken (Adam's bias correction)
        zeros = lambda: [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]  # noqa: E731
        self.state: dict[str, list[torch.Tensor]] = {}
        if kind == "rmsprop":
            self.state["v"] = zeros()
            if self.momentum:
                self.state["m"] = zeros()
        elif kind == "sgd":
            if self.momentum:
                self.state["m"] = zeros()
        else:
            self.state["m"] = zeros()
            self.state["v"] = zeros()

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params = self.params
        grads = [p.grad for p in params]
        lr = self.lr
        self.t += 1
        if self.weight_decay and self.kind != "adamw":  # L2: added to the gradient, as torch does
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self._native and self._rmsprop_native(grads):
            return
        if self.kind == "rmsprop":
            v = self.state["v"]
            torch._foreach_mul_(v, self.rho)
            torch._foreach_addcmul_(v, grads, grads, value=1 - self.rho)
            denom = torch._foreach_add(v, self.eps)
            torch._foreach_sqrt_(denom)
            if not self.momentum and self.lr.device.type == "cpu":
                # On the CPU a Python-number rate costs nothing to read, and one fused
                # p -= lr * g / denom replaces three passes (divide, scale by a tensor, subtract).
                torch._foreach_addcdiv_(params, grads, denom, value=-float(lr))
                return
            update = torch._foreach_div(grads, denom)
            torch._foreach_mul_(update, lr)
            if self.momentum:
                m = self.state["m"]
                torch._foreach_mul_(m, self.momentum)
                torch._foreach_add_(m, update)
                update = m
            torch._foreach_sub_(params, update)
        elif self.kind == "sgd":
            if self.momentum:
                m = self.state["m"]
                # torch starts the buffer at the first gradient; from zeros, mom*0 + g is the same.
                torch._foreach_mul_(m, self.momentum)
                torch._foreach_add_(m, grads)
                grads = torch._foreach_add(grads, m, alpha=self.momentum) if self.nesterov else m
            update = torch._foreach_mul(grads, lr)
            torch._foreach_sub_(params, update)
        else:
            beta1, beta2 = self.betas
            if self.kind == "adamw" and self.weight_decay:
                torch._foreach_mul_(params, 1 - lr * self.weight_decay)
            m, v = self.state["m"], self.state["v"]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            bias1 = 1 - torch.pow(beta1, self.t)
            bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, self.t))
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bias2_sqrt)
            torch._foreach_add_(denom, self.eps)
            update = torch._foreach_div(m, denom)
            torch._foreach_mul_(update, lr / bias1)
            torch._foreach_sub_(params, update)

    def _rmsprop_native(self, grads: list[torch.Tensor]) -> bool:
        """The RMSprop update as two calls of the C kernels around torch's square root (the same
        bits as the operations below); False where the kernels cannot be built."""
        lib = native.library()
        if lib is None:
            self._native = False
            return False
        # a gradient in another memory order than its parameter (a channels-last conv weight's
        # gradient may come back in NCHW order) is copied into the parameter's order first
        grads = [g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
                 for p, g in zip(self.params, grads)]
        count = len(self.params)
        if self._owned is None:
            self._denom = [torch.empty_like(v) for v in self.state["v"]]
            sizes = (ctypes.c_int64 * count)(*[p.numel() for p in self.params])
            self._owned = (_pointers(self.state["v"]), _pointers(self._denom), sizes)
        state, denom, sizes = self._owned
        params, grad_pointers = _pointers(self.params), _pointers(grads)
        lib.rmsprop_state(count, grad_pointers, state, denom, sizes, self.rho, 1 - self.rho, self.eps)
        torch._foreach_sqrt_(self._denom)
        lib.rmsprop_params(count, params, grad_pointers, denom, sizes, -float(self.lr))
        torch.autograd.graph.increment_version(self.params + self.state["v"])  # changed behind torch's back
        return True

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"lr": self.lr.cpu().numpy(), "t": self.t.cpu().numpy()}
        for key, tensors in self.state.items():
            for i, tensor in enumerate(tensors):
                out[f"{key}.{i}"] = tensor.detach().cpu().contiguous().numpy()
        return out

    @torch.no_grad()
    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.lr.copy_(torch.from_numpy(np.array(arrays["lr"])))
        self.t.copy_(torch.from_numpy(np.array(arrays["t"])))
        for key, tensors in self.state.items():
            for i, tensor in enumerate(tensors):
                tensor.copy_(torch.from_numpy(np.array(arrays[f"{key}.{i}"])))


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    """The tensors' data pointers as a C array (a kernel's ``float *const *``)."""
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _dense_float32_cpu(tensor: torch.Tensor) -> bool:
    """A float32 CPU tensor whose elements fill its memory without gaps (plain or channels-last order)."""
    channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    dense = tensor.is_contiguous() or channels_last
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and dense


@dataclass
class Schedule:
    """Learning rate as a function of the step; 'plateau' also reacts to the epoch's monitored loss.

    Syntax: ``constant``, ``step[:EVERY[:GAMMA]]`` (epochs; default a third of the run, 0.1),
    ``exponential[:GAMMA]`` (per epoch, 0.9), ``cosine`` (to 0), ``onecycle[:PEAK_FRACTION]``
    (warm up from lr/25 over 30% of the steps, then cosine down to lr/1e4, as torch's OneCycleLR),
    ``plateau[:PATIENCE[:FACTOR]]`` (2 epochs, 0.5).
    """

    kind: str
    base_lr: float
    epochs: int
    steps_per_epoch: int
    a: float | None = None
    b: float | None = None
    scale: float = 1.0  # plateau's accumulated reduction
    best: float = math.inf
    bad_epochs: int = 0

    @classmethod
    def parse(cls, text: str, base_lr: float, epochs: int, steps_per_epoch: int) -> Schedule:
        parts = str(text).split(":")
        kind = parts[0].lower()
        if kind in ("none", ""):
            kind = "constant"
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {text!r}; choose one of: {', '.join(SCHEDULES)}")
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            raise ConfigError(f"schedule {text!r}: arguments after ':' must be numbers") from None
        if len(nums) > 2:
            raise ConfigError(f"schedule {text!r}: at most two arguments")
        sched = cls(kind, base_lr, epochs, steps_per_epoch, *(nums + [None, None])[:2])
        for value in nums:
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"schedule {text!r}: arguments must be positive")
        return sched

    def lr_at(self, step: int) -> float:
        total = max(1, self.epochs * self.steps_per_epoch)
        epoch = step // max(1, self.steps_per_epoch)
        lr = self.base_lr
        if self.kind == "step":
            every = int(self.a) if self.a else max(1, self.epochs // 3)
            gamma = self.b if self.b else 0.1
            return lr * gamma ** (epoch // every)
        if self.kind == "exponential":
            return lr * (self.a or 0.9) ** epoch
        if self.kind == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if self.kind == "onecycle":
            peak = min(max(self.a or 0.3, 0.0), 1.0)
            warm = max(1.0, peak * total - 1)
            start, end = lr / 25.0, lr / 25.0 / 1e4
            if step <= warm:
                return start + (lr - start) * 0.5 * (1 - math.cos(math.pi * step / warm))
            frac = min(1.0, (step - warm) / max(1.0, total - 1 - warm))
            return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))
        if self.kind == "plateau":
            return lr * self.scale
        return lr

    @property
    def per_step(self) -> bool:
        return self.kind in ("cosine", "onecycle")

    def end_epoch(self, monitored: float) -> None:
        if self.kind != "plateau" or not math.isfinite(monitored):
            return
        if monitored < self.best - 1e-4:
            self.best, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= int(self.a or 2):
                self.scale *= self.b or 0.5
                self.bad_epochs = 0

    def state(self) -> dict[str, Any]:
        return {
            "scale": self.scale, "best": self.best if math.isfinite(self.best) else None,
            "bad_epochs": self.bad_epochs,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.scale = float(state.get("scale", 1.0))
        best = state.get("best")
        self.best = math.inf if best is None else float(best)
        self.bad_epochs = int(state.get("bad_epochs", 0))
