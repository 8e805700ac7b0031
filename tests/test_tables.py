"""mnistlab.inspect.tables and the compare tables that the CLI, the report and the web page share."""

from __future__ import annotations

import numpy as np
import pytest

import mnistlab.data
import mnistlab.models
from _inspect_models import planted_convnet, planted_dataset
from mnistlab.cli import main
from mnistlab.inspect import compare_classes
from mnistlab.inspect.report import build_report
from mnistlab.inspect.tables import Column, Table, format_cell
from mnistlab.runs import make_manifest, write_run


def test_format_cell():
    assert format_cell(0.123456) == "0.1235" and format_cell(np.float32(2.5)) == "2.5"
    assert format_cell(0.123456, ".3f") == "0.123" and format_cell(-1.5, "+.2f") == "-1.50"
    assert format_cell(np.int64(7)) == "7" and format_cell(7, ".1f") == "7.0"
    assert format_cell(True) == "yes" and format_cell(np.bool_(False)) == "no"
    assert format_cell([3, 1]) == "3, 1" and format_cell("x<y") == "x<y"


def test_text_aligns_numbers_right_and_text_left():
    table = Table("T", [Column("name"), Column("value", ".2f")], [["a", 1.0], ["longer", 12.345]], note="N")
    assert table.to_text().split("\n") == [
        "T", "N", "name    value", "a        1.00", "longer  12.35",
    ]


def test_html_escapes_and_marks_numbers():
    table = Table("a<b", [Column("k"), Column("v", ".1f")], [["<i>", 0.25], ["ok", 3]])
    text = table.to_html()
    assert text.startswith("<table><caption>a&lt;b</caption><tr><th>k</th><th>v</th></tr>")
    assert "<td>&lt;i&gt;</td>" in text and '<td class="num">0.2</td>' in text
    assert '<td class="num">3.0</td>' in text
    assert Table("empty", [Column("k")]).to_html() == '<p class="muted">(none)</p>'


def test_from_records_and_json():
    table = Table.from_records([{"a": 1, "b": "x"}, {"a": 2}], title="t")
    assert table.headers() == ["a", "b"] and table.rows == [[1, "x"], [2, ""]]
    assert Table.from_records([{"a": 1, "b": 2}], ["b"]).rows == [[2]]
    assert table.to_json() == {"title": "t", "note": "", "columns": ["a", "b"], "rows": [[1, "x"], [2, ""]]}


@pytest.fixture(scope="module")
def comparison_inputs():
    return planted_convnet(), planted_dataset(8)


def test_compare_tables_hold_the_comparison(comparison_inputs):
    model, ds = comparison_inputs
    comparison = compare_classes(model, ds, 4, 9, n=3)
    ranking = comparison.ranking_table(5)
    top = comparison.table(5)
    assert ranking.headers()[:8] == ["layer", "kind", "unit", "AUC", "d", "mean 4", "mean 9", "favours"]
    assert [row[:5] for row in ranking.rows] == [
        [r["layer"], r["kind"], r["unit"], r["auc"], r["smd"]] for r in top
    ]
    assert [row[7] for row in ranking.rows] == ["4" if r["favours"] == "A" else "9" for r in top]
    summary = comparison.summary_table(max_units=1)
    for row, expected in zip(summary.rows, comparison.summary()):
        assert row[:3] == [expected["layer"], expected["red"], expected["yellow"]]
        more = " ..." if len(expected["red_units"]) > 1 else ""
        assert row[3] == ", ".join(map(str, expected["red_units"][:1])) + more


def test_cli_report_and_web_show_the_same_compare_tables(comparison_inputs, tmp_path, monkeypatch, capsys):
    model, ds = comparison_inputs
    comparison = compare_classes(model, ds, 4, 9, n=3)

    run_dir = write_run(
        tmp_path / "run", make_manifest("cnn", {"epochs": 1}, dataset="mnist"), {"w": np.zeros(1)},
        model.preprocess.to_arrays(), [],
    )
    monkeypatch.setattr(mnistlab.models, "load_model", lambda path: model)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda name, **kw: ds)
    assert main(["compare", str(run_dir), "--a", "label=4", "--b", "label=9", "--n", "3", "--top", "15"]) == 0
    printed = capsys.readouterr().out
    assert comparison.summary_table().to_text() in printed
    assert comparison.ranking_table(15).to_text() in printed

    html = build_report(model, ds, make_manifest("cnn", {}, dataset="mnist"), oip_steps=2, oip_max_units=2)
    assert comparison.summary_table().to_html() in html
    assert comparison.ranking_table(15).to_html() in html

    from mnistlab.web.analysis import compare_answer

    answer = compare_answer(model, ds, 4, 9, 3, None)
    assert answer["tables"] == [comparison.summary_table().to_json(), comparison.ranking_table(15).to_json()]
