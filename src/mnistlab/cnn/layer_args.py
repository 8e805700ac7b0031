"""Arguments of the CNN's layer kinds: converters that raise one ConfigError naming the layer, the
argument and the fix, and ``Arg``, one argument's name, converter, default and aliases."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


def positive_int(value: Any, where: str, key: str) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a positive integer") from None
    if number < 1:
        raise ConfigError(f"{where}: {key}={value!r} must be a positive integer")
    return number


def dropout_rate(value: Any, where: str, key: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a number") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{where}: dropout rate {value!r} must be in [0, 1)")
    return rate


def positive_float(value: Any, where: str, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ConfigError(f"{where}: {key}={value!r} must be a positive number")
    return number


def boolean(value: Any, where: str, key: str) -> bool:
    text = str(value).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{where}: {key}={value!r} is not true or false")


PADDINGS = ("valid", "same", "tf_same")


def padding(value: Any, where: str, key: str) -> str | int:
    text = str(value).lower()
    if text in PADDINGS:
        return text
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigError(f"{where}: {key}={value!r} is not valid, same, tf_same or a non-negative integer")
    return number


def activation(allowed: tuple[str, ...]) -> Callable[[Any, str, str], str]:
    def convert(value: Any, where: str, key: str) -> str:
        text = str(value).lower()
        if text not in allowed:
            raise ConfigError(f"{where}: unknown activation {value!r}; choose one of: {', '.join(allowed)}")
        return text

    return convert


REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    """One argument of a kind. ``default`` may be a function of the other arguments (pool stride = size)."""

    name: str
    convert: Callable[[Any, str, str], Any]
    default: Any = REQUIRED
    aliases: tuple[str, ...] = ()
    stored_at_default: bool = True  # False for options added later: manifests leave them out at their default
    # False: only as key=value, so options added later keep old positional specs' meaning
    positional: bool = True

    def default_for(self, values: Mapping[str, Any]) -> Any:
        return self.default(values) if callable(self.default) else self.default
