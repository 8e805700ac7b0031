"""`GET /api/docs`: the API reference as one self-contained HTML page, rendered from the app's
OpenAPI schema on the server. FastAPI's Swagger UI loads its script and styles from a CDN, which
breaks the page's promise that it works offline and that nothing leaves the machine."""

from __future__ import annotations

import html
import re
from typing import Any


def escape(text: str) -> str:
    """HTML-escaped, the docstrings' ``literal`` spans as <code>."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(text))


_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "h2{font:600 1.05em ui-monospace,monospace;margin:1.6em 0 .3em}"
    "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left;vertical-align:top}code{font-family:ui-monospace,monospace}"
)


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    text = str(schema.get("type", "any"))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None or high is not None:
        text += f" {'' if low is None else low}..{'' if high is None else high}"
    return text


_Row = tuple[str, str, str, str, bool]  # name, type, default, meaning, required


def _table(rows: list[_Row], first: str) -> str:
    head = f"<tr><th>{first}</th><th>type</th><th>default</th><th>meaning</th></tr>"
    body = "".join(
        f"<tr><td><code>{escape(name)}</code>{' (required)' if required else ''}</td>"
        f"<td>{escape(kind)}</td><td>{escape(default)}</td><td>{escape(meaning)}</td></tr>"
        for name, kind, default, meaning, required in rows
    )
    return f"<table>{head}{body}</table>"


def _row(name: str, schema: dict[str, Any], required: bool, meaning: str = "") -> _Row:
    default = "" if "default" not in schema else str(schema["default"]).lower()
    return name, _type(schema), default, meaning or schema.get("description", ""), required


def _operation(method: str, path: str, op: dict[str, Any], schemas: dict[str, Any]) -> str:
    what = escape(op.get("description") or op.get("summary", ""))
    parts = [f"<h2>{method.upper()} {escape(path)}</h2><p>{what}</p>"]
    params = [
        _row(f"?{p['name']}=", p.get("schema", {}), p.get("required", False), p.get("description", ""))
        for p in op.get("parameters", [])
    ]
    if params:
        parts.append(_table(params, "query"))
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    model = schemas.get(body.get("$ref", "").rsplit("/", 1)[-1])
    if model:
        parts.append(f"<p>JSON body: {escape(model.get('description', ''))}</p>")
        required = set(model.get("required", []))
        fields = [_row(n, s, n in required) for n, s in model.get("properties", {}).items()]
        parts.append(_table(fields, "field"))
    return "".join(parts)


def api_reference_html(schema: dict[str, Any]) -> str:
    """Every operation of an OpenAPI schema: method, path, what it does, its query parameters and
    JSON body fields. Plain HTML and inline CSS: nothing is fetched from anywhere."""
    schemas = schema.get("components", {}).get("schemas", {})
    operations = "".join(
        _operation(method, path, op, schemas)
        for path, methods in schema.get("paths", {}).items()
        for method, op in methods.items()
    )
    title = escape(f"{schema['info']['title']} {schema['info']['version']} API")
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1><p>Errors are 4xx answers "
        '<code>{"error": "one line"}</code>. The machine-readable schema: '
        f'<a href="/api/openapi.json">/api/openapi.json</a>.</p>{operations}</body></html>'
    )
