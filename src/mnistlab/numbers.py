"""Lists of whole numbers as people type them: '3', '1,2,3', '10-20', '0-7,12'."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfigError


def parse_number_list(parts: Iterable[str], what: str = "index", example: str = "10-20") -> list[int]:
    """Each part may hold numbers, comma lists and ranges; the result keeps their order."""
    out: list[int] = []
    for value in parts:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    lo, hi = part.split("-", 1)
                    out.extend(range(int(lo), int(hi) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ConfigError(
                    f"bad {what} {part!r}; use numbers, lists (1,2,3) or ranges ({example})"
                ) from None
    return out
