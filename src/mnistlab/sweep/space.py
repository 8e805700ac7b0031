"""The search-space language: one term per parameter, separated by spaces or newlines.

    lr=log:0.01:1            a float drawn on a log scale between 0.01 and 1
    momentum=float:0.5:0.99  a float on a linear scale (float:LO:HI:STEP for a grid)
    batch_size=int:100:1000:100
    epochs=logint:5:40       an integer on a log scale
    activation=choice:relu,tanh
    layers=choice:70,30|100,50|128   choices holding commas are separated by '|'

Lines starting with '#' are comments (for --space-file). Each engine names the parameters it
accepts and how their values are checked; a bad term gets one line that quotes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

KINDS = ("log", "float", "int", "logint", "choice")
_TERM = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=([a-z]+):(.+)\Z")


@dataclass(frozen=True)
class Param:
    """What an engine accepts for one searchable name: the value type and a check of one value."""

    kind: type  # float, int, str or tuple (a tuple of ints written "70,30")
    check: Callable[[Any], None]  # raises ConfigError for a value the engine refuses


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()
    term: str = ""

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this dimension (choices of tuples travel as strings)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.kind == "logint"
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.kind == "log")


def parse_space(text: str, params: dict[str, Param]) -> list[Dimension]:
    """Dimensions from SPEC text; ConfigError naming the bad term otherwise."""
    terms = [t for line in text.splitlines() for t in line.split("#", 1)[0].split()]
    if not terms:
        raise ConfigError("the search space is empty; give terms like lr=log:0.01:1 (see docs/sweeps.md)")
    dims: dict[str, Dimension] = {}
    for term in terms:
        dim = _parse_term(term, params)
        if dim.name in dims:
            raise ConfigError(f"search space term {term!r}: {dim.name} appears twice; keep one")
        dims[dim.name] = dim
    return list(dims.values())


def _parse_term(term: str, params: dict[str, Param]) -> Dimension:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"search space term {term!r}: {why}")

    match = _TERM.match(term)
    if not match:
        raise bad(f"expected NAME=KIND:ARGS with KIND one of {', '.join(KINDS)}, e.g. lr=log:0.01:1")
    name, kind, args = match.group(1).replace("-", "_"), match.group(2), match.group(3)
    if name not in params:
        raise bad(f"unknown parameter {name!r}; this engine searches: {', '.join(sorted(params))}")
    if kind not in KINDS:
        raise bad(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    param = params[name]
    if kind == "choice":
        parts = args.split("|") if "|" in args else args.split(",")
        try:
            values = tuple(_convert(part.strip(), param.kind) for part in parts)
        except ValueError:
            example = " list like 70,30" if param.kind is tuple else ""
            raise bad(f"a choice is not a {param.kind.__name__} value{example}") from None
        if len(set(values)) != len(values):
            raise bad("a choice appears twice")
        for value in values:
            _check(param, value, bad)
        # Optuna stores choices as plain scalars: a layer list travels as its text, e.g. "70,30"
        return Dimension(name, kind, choices=tuple(_as_scalar(v) for v in values), term=term)
    if param.kind not in (int, float):
        raise bad(f"{name} takes a list of values: {name}=choice:A,B")
    numbers = args.split(":")
    if len(numbers) not in (2, 3) or (kind in ("log", "logint") and len(numbers) == 3):
        form = f"{kind}:LO:HI" + ("" if kind in ("log", "logint") else "[:STEP]")
        raise bad(f"expected {name}={form}")
    integer = kind in ("int", "logint")
    try:
        low, high, *step = (_convert(n, int if integer else float) for n in numbers)
    except ValueError:
        raise bad(f"bounds must be {'integers' if integer else 'numbers'}") from None
    if integer and param.kind is float:
        raise bad(f"{name} is a real number; use {name}=float:LO:HI or log:LO:HI")
    if not integer and param.kind is int:
        raise bad(f"{name} is an integer; use {name}=int:LO:HI[:STEP] or logint:LO:HI")
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise bad("the low bound must be below the high bound")
    if kind in ("log", "logint") and low <= 0:
        raise bad("a log scale needs a low bound above 0")
    if step and not step[0] > 0:
        raise bad("the step must be above 0")
    for value in (low, high):
        _check(param, value, bad)
    return Dimension(name, kind, float(low), float(high), float(step[0]) if step else None, term=term)


def _convert(text: str, kind: type) -> Any:
    if kind is tuple:
        sizes = tuple(int(s) for s in text.split(","))
        if not sizes:
            raise ValueError(text)
        return sizes
    if kind is int:
        value = float(text)
        if value != int(value):
            raise ValueError(text)
        return int(value)
    if kind is float:
        return float(text)
    if not text:
        raise ValueError(text)
    return text


def _as_scalar(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def _check(param: Param, value: Any, bad: Callable[[str], ConfigError]) -> None:
    try:
        param.check(value)
    except ConfigError as exc:
        raise bad(str(exc)) from None


def trial_values(dims: list[Dimension], params: dict[str, Param], drawn: dict[str, Any]) -> dict[str, Any]:
    """Drawn Optuna values turned back into the engine's types (a "70,30" choice into (70, 30))."""
    out = {}
    for dim in dims:
        value = drawn[dim.name]
        out[dim.name] = _convert(value, tuple) if params[dim.name].kind is tuple else value
    return out
