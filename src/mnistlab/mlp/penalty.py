"""The L1 and L2 penalties on the weights (never the biases), in the trainer's working units.

The working first-layer weights are the model's divided by the input scale s (see layout), so a
penalty of the model's weights W = s w reads those entries scaled back up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import MLPConfig
    from .layout import WorkingLayout


def penalty_loss(config: MLPConfig, working: WorkingLayout, params: np.ndarray, scratch: np.ndarray) -> float:
    """l2/2 * sum W**2 + l1 * sum |W| over the model's weights, from working ``params``."""
    w = params[: working.n_weights]
    w1, s = w[: working.n_first], working.input_scale
    loss = 0.0
    if config.l2:
        rest = w[working.n_first :]  # one pass over the weights: runs every batch
        squares = s * s * float(np.dot(w1, w1)) + float(np.dot(rest, rest))
        loss += 0.5 * config.l2 * squares
    if config.l1:
        size = float(np.abs(w, out=scratch[: len(w)]).sum())
        if s != 1:
            size += (s - 1) * float(scratch[: len(w1)].sum())
        loss += config.l1 * size
    return loss


def add_l1_gradient(
    config: MLPConfig,
    working: WorkingLayout,
    params: np.ndarray,
    grad: np.ndarray,
    grad_scale: float,
    scratch: np.ndarray,
) -> None:
    """grad += grad_scale * l1 * sign(W), in working units (the gradient of l1 * sum |W|)."""
    nw = working.n_weights
    term = scratch[:nw]
    np.sign(params[:nw], out=term)
    term *= grad_scale * config.l1
    if working.input_scale != 1:
        term[: working.n_first] /= working.input_scale
    grad[:nw] += term
