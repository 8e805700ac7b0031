"""Hyperparameter sweeps on Optuna: a study in a relational database (SQLite on one machine,
PostgreSQL across several), trials that train ordinary run directories, validation accuracy as the
objective, and the test set left alone until the sweep is over."""

from .engines import ENGINES, without_test_split
from .space import parse_space
from .study import Sweep, open_storage, run_worker

__all__ = ["ENGINES", "Sweep", "open_storage", "parse_space", "run_worker", "without_test_split"]
