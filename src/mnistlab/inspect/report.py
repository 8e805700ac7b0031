"""One self-contained HTML page about a run: every figure embedded as a PNG, nothing fetched.

Sections (their ids): ``summary`` (what was trained, parameters, test accuracy, layers),
``training`` (curves), ``confusions`` (matrix, most confused pairs, misclassified galleries),
``compare`` (the 4-versus-9 study), ``ambiguous`` (images of one class closest to the other),
``attribution`` (which pixels of those ambiguous images pushed toward one class or the other),
``oip`` (optimal input patterns of the last conv layer, or of an MLP's first hidden layer).
A section that cannot be built (say, a dataset without a class 9) says why instead of failing
the whole report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import MnistlabError
from ..model_api import InspectableModel
from .activations import (
    compute_activations,
    default_oip_layer,
    last_conv_layer,
    last_hidden_dense_layer,
    layer_shapes,
)
from .tables import Table

SECTIONS = ("summary", "training", "confusions", "compare", "ambiguous", "attribution", "oip")

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } .muted { color: #777; } .note { background: #fff6e0; padding: 0.5em 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; } th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def figure_png(fig, dpi: int = 90, *, tight: bool = True) -> bytes:
    """A figure as PNG bytes; ``tight`` crops the blank margin (the report does, the web page keeps it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def _img(fig, caption: str = "", dpi: int = 90) -> str:
    data = base64.b64encode(figure_png(fig, dpi)).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    return Table.from_records(rows, columns).to_html()


def build_report(
    model: InspectableModel,
    dataset: Dataset,
    manifest: dict | None = None,
    history: Sequence[dict] = (),
    *,
    title: str | None = None,
    pair: tuple[int, int] = (4, 9),
    n_compare: int = 3,
    n_ambiguous: int = 4,
    oip_layer: str | None = None,
    oip_steps: int = 100,
    oip_max_units: int = 128,
    seed: int = 0,
    split: str = "test",
    on_section: Callable[[str], None] | None = None,
) -> str:
    """The report as an HTML string (see the module doc for the sections). ``manifest`` and
    ``history`` are a run's (``load_run``, ``read_history``); a model without a run (``from_torch``)
    leaves them out."""
    from ..viz.ambiguous import plot_ambiguous
    from ..viz.compare import plot_contrast, plot_ranking
    from ..viz.confusion import plot_confusion
    from ..viz.curves import plot_history
    from ..viz.gallery import plot_confusion_gallery, plot_oip_gallery
    from .ambiguous import find_ambiguous
    from .compare import compare_classes
    from .confusions import confusions
    from .oip import optimize_inputs

    note = on_section or (lambda name: None)
    manifest = manifest or {}
    names = [str(c) for c in dataset.class_names]
    images, labels = dataset.split(split)
    shapes = layer_shapes(model)
    t0 = time.perf_counter()
    proba = compute_activations(model, images, ["output"])["output"]
    conf = confusions(model, dataset, split, proba=proba)
    parts: dict[str, str] = {}

    def section(key: str, build: Callable[[], str]) -> None:
        note(key)
        try:
            parts[key] = build()
        except MnistlabError as exc:
            parts[key] = f'<p class="note">This section could not be built: {html.escape(str(exc))}</p>'

    def summary() -> str:
        rows = [
            {"": "engine", "value": manifest.get("kind", model.kind)},
            {"": "dataset", "value": manifest.get("dataset", dataset.name)},
            {"": "created", "value": manifest.get("created", "")},
            {
                "": f"{split} accuracy",
                "value": f"{conf.accuracy:.4f} ({int(np.trace(conf.matrix))}/{len(labels)})",
            },
        ]
        for key, value in manifest.items():
            if key not in ("config", "versions", "format", "kind", "dataset", "created") and not isinstance(
                value, (dict, list)
            ):
                rows.append({"": key, "value": value})
        config = [{"parameter": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v)}
                  for k, v in manifest.get("config", {}).items()
                  if not isinstance(v, (dict, list)) or len(json.dumps(v)) <= 120]  # specs: spec_string
        from ..importers import original_names

        sources = original_names(manifest)
        imported = manifest.get("imported") or {}
        if imported:
            origin = f"{imported.get('file')} ({imported.get('format')})"
            rows.insert(1, {"": "imported from", "value": origin})
        layers = [{"layer": n, "shape": " x ".join(map(str, shapes[n])), "units": shapes[n][0],
                   **({"original layers": sources.get(n, "")} if sources else {})}
                  for n in model.layer_names()]
        versions = [{"library": k, "version": v} for k, v in manifest.get("versions", {}).items()]
        return (_table(rows) + "<h3>Parameters</h3>" + _table(config) + "<h3>Layers</h3>" + _table(layers)
                + "<h3>Versions</h3>" + _table(versions))

    def training() -> str:
        if not history:
            imported = manifest.get("imported") or {}
            if imported:
                return (f'<p class="muted">No training history: this model was imported from '
                        f'{html.escape(str(imported.get("file")))}, not trained here.</p>')
            return '<p class="muted">No training history in this run.</p>'
        return _img(plot_history(list(history)), "loss and accuracy per epoch")

    def confusion_section() -> str:
        pairs = conf.pairs(5)
        rows = [
            {
                "true": names[t], "predicted": names[p], "count": c,
                "share of true class": f"{c / max(1, int(conf.matrix[t].sum())):.2%}",
            }
            for t, p, c in pairs
        ]
        return (
            _img(
                plot_confusion(conf.matrix, names, title=f"{split} accuracy {conf.accuracy:.2%}"),
                "confusion matrix: counts and row-normalized",
            )
            + "<h3>Most confused pairs</h3>"
            + _table(rows)
            + _img(
                plot_confusion_gallery(conf, images, top=5, per_pair=8),
                "misclassified images of the most confused pairs",
            )
        )

    def compare_section() -> str:
        a, b = pair
        comparison = compare_classes(model, dataset, a, b, n=n_compare, split=split)
        ranking = comparison.ranking_table(15)
        out = [
            f"<p>The first {n_compare} test images of {names[a]} (A) and of {names[b]} (B). A position or "
            "node is <em>strongly active</em> at half its map's peak over these images. Red: strongly "
            "active in every A and no B; yellow: every A and some B. The ranking uses all test images of "
            f"the two classes: AUC is the chance that a random {names[a]} scores higher than a random "
            f"{names[b]} (a map by its mean activation), d the standardized mean difference.</p>",
            comparison.summary_table().to_html(),
        ]
        shown = [
            l
            for l in (last_conv_layer(model), last_hidden_dense_layer(model))
            if l in comparison.contrasts
        ]
        for layer in shown or comparison.layers[:1]:
            out.append(_img(plot_contrast(comparison, layer), f"{layer}: red and yellow units"))
        top = comparison.table(15)
        out.append(
            _img(plot_ranking(top, a_name=names[a], b_name=names[b]), "most discriminative maps and nodes")
        )
        out.append(ranking.to_html())
        return "".join(out)

    found: dict[str, Any] = {}

    def ambiguous_cases():  # shared by the ambiguous and attribution sections
        if "cases" not in found:
            found["cases"] = find_ambiguous(model, dataset, pair, n=n_ambiguous, split=split, proba=proba)
        return found["cases"]

    def ambiguous_section() -> str:
        a, b = pair
        result = ambiguous_cases()
        rows = [
            {
                "index": r["index"], "predicted": names[r["predicted"]], f"p({names[a]})": r[f"p{a}"],
                f"p({names[b]})": r[f"p{b}"], "margin": r["margin"],
                "nodes pulling toward the winner": r["top_pull"],
            }
            for r in result.table()
        ]
        return (
            f"<p>The test images of {names[a]} with the smallest margin p({names[a]}) - p({names[b]}). "
            "Beside each: "
            "its class probabilities and its activations in the last dense layer against the mean of each "
            "class; "
            "the numbered nodes pulled it hardest toward the winning class (their value sits on the winner's "
            "side of the two class means, weighted by how well they separate the classes).</p>"
            + _table(rows)
            + _img(plot_ambiguous(result, names), f"{names[a]}s closest to {names[b]}")
        )

    def attribution_section() -> str:
        from ..viz.attribution import plot_attribution_rows
        from .attribution import attribute, map_layers

        a, b = pair
        cases = ambiguous_cases()
        if not cases.cases:
            return f'<p class="muted">No {split} image of {names[a]} to explain.</p>'
        images = np.stack([dataset.split(split)[0][c.index] for c in cases.cases])
        captions = [
            f"#{c.index}: p({names[a]}) {c.proba[a]:.2f}, p({names[b]}) {c.proba[b]:.2f}" for c in cases.cases
        ]
        ig = attribute(model, images, (a, b), "ig")
        rows = [
            {
                "index": c.index, f"p({names[a]}) - p({names[b]})": float(ig.objective[i]),
                "at a black image": float(ig.baseline_objective[i]),
                "sum of the map": float(ig.maps[i].sum(dtype=np.float64)),
                "completeness error": float(ig.completeness_error[i]),
            }
            for i, c in enumerate(cases.cases)
        ]
        out = [
            f"<p>The same {names[a]}s, each pixel coloured by how much it raised p({names[a]}) - "
            f"p({names[b]}) (red) or "
            f"lowered it (blue): integrated gradients from a black image, {ig.options['steps']} "
            "Gauss-Legendre points. "
            "The map sums to the change of the objective from the black image to the digit, up to the "
            "completeness "
            "error in the table. mnistlab attribute RUN --index I --method ig --target "
            f"{a},{b} --sanity draws one image with every class and the sanity check.</p>", _table(rows),
            _img(plot_attribution_rows(ig, names, captions), "integrated gradients"),
        ]
        if map_layers(model, shapes):
            try:
                cam = attribute(model, images, (a, b), "gradcam")
            except MnistlabError as exc:  # a model without layer gradients still gets its IG maps
                out.append(f'<p class="note">No Grad-CAM: {html.escape(str(exc))}</p>')
            else:
                out.append(
                    _img(
                        plot_attribution_rows(cam, names, captions),
                        f"Grad-CAM of {cam.layer}: where the maps "
                        f"that favour {names[a]} over {names[b]} fire",
                    )
                )
        return "".join(out)

    def oip_section() -> str:
        layer = oip_layer or default_oip_layer(model)
        count = shapes[layer][0]
        units = list(range(min(count, oip_max_units)))
        result = optimize_inputs(model, layer, units, steps=oip_steps, seed=seed)
        dead = [int(u) for u in result.units[result.dead]]
        below = [int(u) for u in result.units[~result.reached() & ~result.dead]]
        return (
            f"<p>Gradient ascent on the input image for each of {len(units)} "
            f"{'maps' if len(shapes[layer]) == 3 else 'nodes'} of "
            f"<b>{layer}</b>{f' (the first {len(units)} of {count})' if len(units) < count else ''}, all "
            "optimized together as one batch: starting from noise at length scales 1, 2, 4 and 7 pixels, "
            f"{oip_steps} normalized gradient steps, seed {seed}, {result.seconds:.1f} s. Dark = ink. "
            f"Title: final activation.</p><p>{int(result.reached().sum())} of {len(units)} reached at "
            "least 10x their starting activation; dead (silent for every start): "
            f"{', '.join(map(str, dead)) or 'none'}"
            f"{'; below 10x: ' + ', '.join(map(str, below)) if below else ''}.</p>"
            + _img(plot_oip_gallery(result), f"optimal input patterns of {layer}")
        )

    section("summary", summary)
    section("training", training)
    section("confusions", confusion_section)
    section("compare", compare_section)
    section("ambiguous", ambiguous_section)
    section("attribution", attribution_section)
    section("oip", oip_section)

    na, nb = (names[c] if 0 <= c < len(names) else str(c) for c in pair)
    headings = {
        "summary": "Summary and parameters", "training": "Training curves", "confusions": "Confusions",
        "compare": f"What separates {na} from {nb}",
        "ambiguous": f"Ambiguous images: {na}s that look like {nb}s",
        "attribution": f"Which pixels say {na} and which say {nb}", "oip": "Optimal input patterns",
    }
    title = (
        title
        or f"mnistlab report: {manifest.get('kind', model.kind)} on {manifest.get('dataset', dataset.name)}"
    )
    nav = " ".join(f'<a href="#{k}">{html.escape(headings[k])}</a>' for k in SECTIONS)
    body = "".join(
        f'<section id="{k}"><h2>{html.escape(headings[k])}</h2>{parts[k]}</section>' for k in SECTIONS
    )
    footer = f'<p class="muted">Written by mnistlab in {time.perf_counter() - t0:.1f} s.</p>'
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}{footer}</body></html>\n")


def write_report(
    run_dir, out: str | Path | None = None, *, dataset: Dataset | str | None = None, data_dir=None, **kwargs
) -> Path:
    """Build the report of a run directory and write it (default RUN/report.html) atomically."""
    from ..runs import read_history
    from ..safe_write import atomic_write_bytes, guard
    from .activations import load_run

    model, ds, manifest = load_run(run_dir, dataset, data_dir=data_dir)
    history = read_history(Path(run_dir))
    kwargs.setdefault(
        "title",
        f"mnistlab report: {Path(run_dir).name} ({manifest.get('kind')} on {manifest.get('dataset')})",
    )
    text = build_report(model, ds, manifest, history, **kwargs)
    path = Path(out) if out else Path(run_dir) / "report.html"
    with guard(path, "the report", "the run is unchanged", "another --out"):
        atomic_write_bytes(path, text.encode("utf-8"))
    return path
