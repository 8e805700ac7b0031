"""Activations as name -> function tables, applied in place.

Derivatives are computed from the layer's *output* (scikit-learn's habit), so the backward pass
reuses what the forward pass kept and never needs the pre-activations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0, out=z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # 1/(1+exp(-z)) = (1 + tanh(z/2)) / 2: no overflow warnings for large |z|, one transcendental.
    np.multiply(z, 0.5, out=z)
    np.tanh(z, out=z)
    np.multiply(z, 0.5, out=z)
    return np.add(z, 0.5, out=z)


def tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def relu_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """delta *= relu'(z), from a = relu(z): 1 where a > 0."""
    np.greater(a, 0, out=scratch)
    return np.multiply(delta, scratch, out=delta)


def sigmoid_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """delta *= a (1 - a)."""
    np.subtract(1, a, out=scratch)
    np.multiply(scratch, a, out=scratch)
    return np.multiply(delta, scratch, out=delta)


def tanh_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """delta *= 1 - a**2."""
    np.multiply(a, a, out=scratch)
    np.subtract(1, scratch, out=scratch)
    return np.multiply(delta, scratch, out=delta)


FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh}
BACKWARD: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "relu": relu_backward,
    "sigmoid": sigmoid_backward,
    "tanh": tanh_backward,
}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in place."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def derivative(name: str, a: np.ndarray) -> np.ndarray:
    """f'(z) from a = f(z), as a new array (for analysis code, not the training loop): the training
    loop's own backward formula applied to a delta of ones, so the two can never disagree."""
    return BACKWARD[name](a, np.ones_like(a), np.empty_like(a))


OUTPUT_FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid}
