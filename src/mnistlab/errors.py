"""Errors that the CLI turns into one line on stderr (exit 1) instead of a traceback.

Every message names the problem and, where there is one, the fix.
"""


class MnistlabError(Exception):
    """Base class for errors caused by input, data or environment rather than a bug."""


class DataError(MnistlabError):
    """A data file is missing, corrupt or fails its checksum."""


class ConfigError(MnistlabError, ValueError):
    """A configuration value (layer size, activation name, learning rate, ...) is invalid."""


class RunError(MnistlabError):
    """A run directory is missing, incomplete or from an incompatible version."""


class TrainingDiverged(MnistlabError):
    """Training produced NaN or inf; the last good weights were kept."""


class ModelFileError(MnistlabError):
    """A model file to import is unreadable, unsafe, or uses what mnistlab cannot express."""


class MissingExtra(MnistlabError, ModuleNotFoundError):
    """An optional module is not installed; the message names the extra that brings it (see mnistlab.extras).

    Also a ModuleNotFoundError, so ``except ImportError`` around an optional feature keeps working."""


class WriteError(MnistlabError):
    """The disk refused a write (full, quota, permissions, read-only); the message says what was kept."""
