"""The MLP's training in textbook NumPy: the readable specification of ``mnistlab.mlp.train``.

Same network, loss, shuffling, momentum forms, L1/L2 and learning-rate schedules as the fast
trainer, with none of its speed measures; tests show the two give the same weights (float64).
Not supported here: validation and early stopping, raw uint8 inputs, timing.
"""

from __future__ import annotations

import numpy as np

from .model import MLP
from .schedules import learning_rate

ACTIVATION = {  # f(z), and f'(z) from a = f(z)
    "relu": (lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda a: a * (1 - a)),
    "tanh": (np.tanh, lambda a: 1 - a**2),
}


def forward(model: MLP, W: list, b: list, x: np.ndarray) -> tuple[list, np.ndarray]:
    """Hidden activations (input first) and the output layer's logits."""
    f = ACTIVATION[model.config.activation][0]
    acts = [x]
    for i in range(len(W) - 1):
        acts.append(f(acts[-1] @ W[i] + b[i]))
    return acts, acts[-1] @ W[-1] + b[-1]


def data_loss_and_delta(output: str, logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss over the batch and d loss / d logits: softmax with cross-entropy, or independent
    sigmoids with log-loss summed over the outputs. Either way the delta is (p - onehot) / batch."""
    onehot = np.eye(logits.shape[1])[y]
    if output == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).sum()
    else:
        p = 1 / (1 + np.exp(-logits))
        loss = (np.logaddexp(0, logits) - onehot * logits).sum()
    return loss / len(y), (p - onehot) / len(y)


def train_reference(model: MLP, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Train ``model`` in place on preprocessed (N, input_size) inputs; returns each epoch's mean
    loss (penalty included), averaged over the batches as they were trained."""
    cfg = model.config
    df = ACTIVATION[cfg.activation][1]
    W, b = model.weights, model.biases  # views of model.params: updated in place
    velocity = [np.zeros_like(p) for p in W + b]  # PyTorch's momentum buffer, or the seed's last step
    rng = np.random.default_rng(cfg.seed)
    losses = []
    for epoch in range(cfg.epochs):
        lr = learning_rate(cfg, epoch)
        order, total = rng.permutation(len(x)), 0.0
        for start in range(0, len(x), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            acts, logits = forward(model, W, b, x[batch])
            loss, delta = data_loss_and_delta(cfg.output, logits, y[batch])
            penalty = sum(cfg.l2 / 2 * (w**2).sum() + cfg.l1 * np.abs(w).sum() for w in W)
            total += (loss + penalty) * len(batch)
            grad_W, grad_b = [None] * len(W), [None] * len(b)
            for i in reversed(range(len(W))):  # backpropagation
                grad_W[i] = acts[i].T @ delta + cfg.l2 * W[i] + cfg.l1 * np.sign(W[i])
                grad_b[i] = delta.sum(axis=0)
                if i:
                    delta = (delta @ W[i].T) * df(acts[i])
            for p, g, v in zip(W + b, grad_W + grad_b, velocity):
                if cfg.momentum_form == "seed":  # p -= lr_t g_t + momentum * lr_(t-1) g_(t-1)
                    step = lr * g
                    p -= step + cfg.momentum * v
                    v[...] = step
                else:  # PyTorch's SGD: v = momentum v + g; p -= lr v (Nesterov: lr (g + momentum v))
                    v *= cfg.momentum
                    v += g
                    p -= lr * (g + cfg.momentum * v if cfg.nesterov else v)
        losses.append(total / len(x))
    return losses
