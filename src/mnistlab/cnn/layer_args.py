"""Arguments of the CNN's layer kinds: converters that raise one ConfigError naming the layer, the
argument and the fix, and ``Arg``, one argument's name, converter, default and aliases."""

from __future__ import annotations

import math
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


def real_number(
    allowed: Callable[[float], bool], must: str, named: str = ""
) -> Callable[[Any, str, str], float]:
    """A converter to float: ``allowed`` says which numbers pass (nan never does), ``must`` says which
    in the error, which names the value as ``named`` or else as key=value."""

    def convert(value: Any, where: str, key: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isnan(number) or not allowed(number):
            subject = f"{named} {value!r}" if named else f"{key}={value!r}"
            raise ConfigError(f"{where}: {subject} must be {must}")
        return number

    return convert


dropout_rate = real_number(lambda rate: 0.0 <= rate < 1.0, "a number in [0, 1)", named="dropout rate")
positive_float = real_number(lambda number: number > 0, "a positive number")


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
