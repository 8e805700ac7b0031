"""Update rules: one small class per optimizer, picked by name from ``OPTIMIZERS``.

An optimizer owns the trainer's working parameters and the gradient buffer the backward pass
writes into (both in the working layout and units, see layout). Each batch the trainer
multiplies the gradient by ``gradient_scale(lr)`` for free (it is folded into the output delta),
then calls ``step(lr)``. docs/adding-an-optimizer.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .penalty import add_l1_gradient

if TYPE_CHECKING:  # config validates names against OPTIMIZERS, so this module imports none of them
    from .config import MLPConfig
    from .layout import ParamViews, WorkingLayout


class Optimizer:
    """The interface the trainer uses. ``params`` and ``grad`` may be new views after a step."""

    def __init__(self, config: MLPConfig, working: WorkingLayout) -> None:
        self.config = config
        self.working = working
        self.size = working.size
        self.dtype = working.model.dtype
        self.params: ParamViews = working.views(working.from_model(np.empty(self.size, self.dtype)))
        self.grad: ParamViews = working.views(np.zeros(self.size, self.dtype))
        self.scratch = np.empty(self.size, self.dtype)

    def gradient_scale(self, lr: float) -> float:
        """What the gradient handed to ``step`` is multiplied by (its mean over the batch is 1x)."""
        return 1.0

    def start_epoch(self, lr: float) -> None:
        """Called before the first step of every epoch with that epoch's learning rate."""

    def step(self, lr: float) -> None:
        raise NotImplementedError

    def range_step(self, lr: float) -> Callable[[int, int], None] | None:
        """For a rule that updates each parameter from its own entries only: a function that
        updates the flat parameter range ``lo:hi`` alone, so that the thread which computed a
        range's gradient updates it while that gradient is still in its cache. A step's ranges
        cover every parameter once, each within the weights or within the biases, and then
        ``end_range_step`` is called instead of ``step``. None (the default): ``step`` only."""
        return None

    def end_range_step(self) -> None:
        """After the ranges of a ``range_step`` have all been updated."""


class SGD(Optimizer):
    """Mini-batch SGD with momentum (PyTorch's, Nesterov's or the seed's form), L1 and L2.

    The gradient arrives multiplied by lr, and the velocity is kept as lr times PyTorch's momentum
    buffer (rescaled when the rate changes): PyTorch's arithmetic with fewer passes over memory.
    Parameters, velocity and gradient sit in two stacks of three rows; a step is one BLAS product
    of a 2x3 matrix with the current stack, written into the other one, which becomes current:
    one pass over memory instead of seven NumPy passes.
    """

    def __init__(self, config: MLPConfig, working: WorkingLayout) -> None:
        super().__init__(config, working)
        self.stacks = np.zeros((2, 3, self.size), self.dtype)  # (parameters, velocity, gradient) x 2
        np.copyto(self.stacks[0, 0], self.params.flat)
        self.slots = [(working.views(p), v, working.views(g)) for p, v, g in self.stacks]
        self.current = 0
        self.params, self.velocity, self.grad = self.slots[0]
        # per current stack: its weights' and biases' columns, and the other stack's rows they update
        nw = working.n_weights
        self.halves = [
            (src[:, :nw], src[:, nw:], dst[:2, :nw], dst[:2, nw:])
            for src, dst in ((self.stacks[0], self.stacks[1]), (self.stacks[1], self.stacks[0]))
        ]
        self.last_lr: float | None = None  # the rate the velocity is scaled by
        self.matrices: tuple[float, np.ndarray, np.ndarray] | None = None  # (lr, weights', biases')

    def gradient_scale(self, lr: float) -> float:
        return lr

    def start_epoch(self, lr: float) -> None:
        if self.last_lr is not None and self.config.momentum_form == "standard" and lr != self.last_lr:
            self.velocity *= lr / self.last_lr  # keep PyTorch's unscaled momentum buffer the same
        self.last_lr = lr

    def update_matrices(self, lr: float) -> tuple[np.ndarray, np.ndarray]:
        """The step as a linear map of (parameters, velocity, gradient) to the next parameters and
        velocity, for the weights (with L2, c = lr * l2) and for the biases (c = 0). With g the
        gradient times lr, v the velocity and mu the momentum:
        standard: v' = mu v + g + c p, p' = p - v'; Nesterov: p' = p - (mu v' + g + c p);
        seed: p' = p - (g + c p) - mu v, v' = g + c p (the previous step, not a running sum)."""
        cfg = self.config
        mu = cfg.momentum

        def rows(c: float) -> list[list[float]]:
            if cfg.momentum_form == "seed":
                return [[1 - c, -mu, -1], [c, 0, 1]]
            if cfg.nesterov:
                return [[1 - c * (1 + mu), -mu * mu, -(1 + mu)], [c, mu, 1]]
            return [[1 - c, -mu, -1], [c, mu, 1]]

        if self.matrices is None or self.matrices[0] != lr:
            self.matrices = (lr, np.array(rows(lr * cfg.l2), self.dtype), np.array(rows(0.0), self.dtype))
        return self.matrices[1], self.matrices[2]

    def step(self, lr: float) -> None:
        if self.config.l1:
            add_l1_gradient(self.config, self.working, self.params.flat, self.grad.flat, lr, self.scratch)
        weights, biases = self.update_matrices(lr)
        src_weights, src_biases, dst_weights, dst_biases = self.halves[self.current]
        np.matmul(weights, src_weights, out=dst_weights)  # as range_step's, over whole halves
        np.matmul(biases, src_biases, out=dst_biases)
        if self.config.l1:
            # no product writes the blank rows: the next gradient must find zeros there
            self.grad.flat[self.working.blank] = 0
        self.end_range_step()

    def range_step(self, lr: float) -> Callable[[int, int], None] | None:
        if self.config.l1:  # its gradient term and the blank rows' reset go over every weight
            return None
        weights, biases = self.update_matrices(lr)
        src, dst, nw = self.stacks[self.current], self.stacks[1 - self.current], self.working.n_weights

        def update(lo: int, hi: int) -> None:
            # each entry's update is the same sum of three products however the columns are cut
            np.matmul(weights if hi <= nw else biases, src[:, lo:hi], out=dst[:2, lo:hi])

        return update

    def end_range_step(self) -> None:
        self.current = 1 - self.current
        self.params, self.velocity, self.grad = self.slots[self.current]


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) as torch.optim.Adam computes it, with L2 (and L1) added to the
    gradient like torch's ``weight_decay``. The config's momentum settings do not apply.

    Adam divides by the gradient's own size, so the unit-scaling fold (see layout) does not cancel
    out as it does in SGD: the moments are kept in the model's units.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, config: MLPConfig, working: WorkingLayout) -> None:
        super().__init__(config, working)
        self.first_moment = np.zeros(self.size, self.dtype)
        self.second_moment = np.zeros(self.size, self.dtype)
        self.steps = 0
        self.to_model_units = np.ones(self.size, self.dtype)  # s on the folded first-layer weights
        self.to_model_units[: working.n_first] = working.input_scale
        self.model_grad = np.empty(self.size, self.dtype)

    def step(self, lr: float) -> None:
        cfg, nw = self.config, self.working.n_weights
        beta1, beta2 = self.BETAS
        self.steps += 1
        g = np.multiply(self.grad.flat, self.to_model_units, out=self.model_grad)
        params = np.multiply(self.params.flat, self.to_model_units, out=self.scratch)
        if cfg.l2:
            g[:nw] += cfg.l2 * params[:nw]
        if cfg.l1:
            g[:nw] += cfg.l1 * np.sign(params[:nw])
        self.first_moment *= beta1
        self.first_moment += (1 - beta1) * g
        self.second_moment *= beta2
        self.second_moment += (1 - beta2) * g * g
        denominator = np.sqrt(self.second_moment, out=self.scratch)
        denominator /= np.sqrt(1 - beta2**self.steps)
        denominator += self.EPS
        step = np.divide(self.first_moment, denominator, out=self.scratch)
        step *= lr / (1 - beta1**self.steps)
        step /= self.to_model_units
        self.params.flat -= step


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def make_optimizer(config: MLPConfig, working: WorkingLayout) -> Optimizer:
    return OPTIMIZERS[config.optimizer](config, working)
