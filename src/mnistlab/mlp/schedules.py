"""Learning-rate schedules: the rate of each epoch (MLPConfig.schedule, see config.SCHEDULES)."""

from __future__ import annotations

import math

from .config import MLPConfig


def learning_rate(config: MLPConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under the config's schedule."""
    lr = config.lr
    if config.schedule == "seed":
        for i in range(1, epoch + 1):
            lr /= 1.0 + config.decay * i
        return lr
    if config.schedule == "step":
        return lr * config.gamma ** (epoch // config.step_size)
    if config.schedule == "cosine":
        return config.lr_min + (lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return lr
