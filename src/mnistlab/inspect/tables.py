"""A table as data: a title, typed columns and rows, drawn as text (CLI), HTML (report) or JSON
(web page). Whoever builds a table decides its columns once; the three outputs cannot drift apart."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Column:
    header: str
    number_format: str = ""  # a format spec for numbers such as ".3f"; empty: format_cell's default


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""  # what the columns mean, shown under the title

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = ""
    ) -> Table:
        """Rows given as dicts; the columns are the given keys, or else the first record's keys."""
        records = list(records)
        keys = list(columns) if columns is not None else list(records[0].keys()) if records else []
        return cls(title, [Column(k) for k in keys], [[r.get(k, "") for k in keys] for r in records])

    def headers(self) -> list[str]:
        return [c.header for c in self.columns]

    def formatted_rows(self) -> list[list[str]]:
        return [[format_cell(v, c.number_format) for v, c in zip(row, self.columns)] for row in self.rows]

    def to_text(self) -> str:
        """Aligned plain-text columns (numbers right, text left) under the title and note."""
        cells = self.formatted_rows()
        widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        numeric = [
            bool(self.rows) and all(_is_number(row[i]) for row in self.rows) for i in range(len(widths))
        ]

        def line(values: Sequence[str]) -> str:
            parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
            return "  ".join(parts).rstrip()

        out = [s for s in (self.title, self.note) if s]
        out.append(line(self.headers()))
        out.extend(line(row) for row in cells)
        return "\n".join(out)

    def to_html(self) -> str:
        """A <table> (with the title as its caption); numbers in right-aligned cells of class "num"."""
        if not self.rows:
            return '<p class="muted">(none)</p>'
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers())
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{text}</td>' if _is_number(value) else f"<td>{html.escape(text)}</td>"
                for value, text in zip(raw, shown)
            )
            + "</tr>"
            for raw, shown in zip(self.rows, self.formatted_rows())
        )
        note = f'<p class="muted">{html.escape(self.note)}</p>' if self.note else ""
        return f"<table>{caption}<tr>{head}</tr>{body}</table>{note}"

    def to_json(self) -> dict[str, Any]:
        """Raw values (numbers stay numbers; the page formats them), plus the title and note."""
        return {"title": self.title, "note": self.note, "columns": self.headers(), "rows": self.rows}


def format_cell(value: Any, number_format: str = "") -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if _is_number(value):
        if number_format:
            return format(value, number_format)
        return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
