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


def relu_derivative(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """relu'(z) into ``out``, from a = relu(z): 1 where a > 0."""
    return np.greater(a, 0, out=out)


def sigmoid_derivative(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """a (1 - a) into ``out``."""
    np.subtract(1, a, out=out)
    return np.multiply(out, a, out=out)


def tanh_derivative(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """1 - a**2 into ``out``. np.square rounds as a * a does, but its loop reads ``a`` once."""
    np.square(a, out=out)
    return np.subtract(1, out, out=out)


FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh}
# f'(z) from a = f(z), written into the second argument (the same shape as the first)
DERIVATIVE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "relu": relu_derivative,
    "sigmoid": sigmoid_derivative,
    "tanh": tanh_derivative,
}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in place."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def derivative(name: str, a: np.ndarray) -> np.ndarray:
    """f'(z) from a = f(z), as a new array (for analysis code, not the training loop): the training
    loop's own formula, so the two can never disagree."""
    return DERIVATIVE[name](a, np.empty_like(a))


OUTPUT_FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid}
