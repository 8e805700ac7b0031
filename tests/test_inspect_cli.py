"""The inspect commands end to end on a run directory, with the planted NumPy model standing in for
an engine (tests/test_inspect_engines.py runs them on real tiny trained models)."""

from __future__ import annotations

import numpy as np
import pytest

import mnistlab.data
import mnistlab.models
from _inspect_models import planted_convnet, planted_dataset, planted_mlp
from mnistlab.cli import main
from mnistlab.runs import make_manifest, write_run


@pytest.fixture(params=["cnn", "mlp"])
def run(request, tmp_path, monkeypatch):
    model = planted_convnet() if request.param == "cnn" else planted_mlp()
    dataset = planted_dataset(8)
    run_dir = write_run(
        tmp_path / "run", make_manifest(request.param, {"epochs": 1}, dataset="mnist"), {"w": np.zeros(1)},
        model.preprocess.to_arrays(), [{"epoch": 1, "loss": 0.5, "train_accuracy": 0.8}],
    )
    monkeypatch.setattr(mnistlab.models, "load_model", lambda path: model)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda name, **kw: dataset)
    return run_dir, model


def test_show_activations(run, capsys):
    run_dir, model = run
    layer = model.layer_names()[0]
    assert (
        main(
            [
                "show-activations", str(run_dir), "--layer", layer, "--index", "32", "--index", "72,73",
                "--standardize",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "#32 (4)" in out.out and "#73 (9)" in out.out
    assert (run_dir / "figures" / f"activations-{layer}.png").stat().st_size > 1000
    target = run_dir / "mine.png"
    assert (
        main(
            [
                "show-activations", str(run_dir), "--label", "4", "--n", "2", "--out", str(target), "--cmap",
                "gray",
            ]
        )
        == 0
    )
    # One PNG per layer: the name gets the layer appended when there are several.
    assert target.exists() if len(model.layer_names()) == 2 else (run_dir / f"mine-{layer}.png").exists()


def test_show_activations_errors(run, capsys):
    run_dir, model = run
    assert main(["show-activations", str(run_dir), "--layer", "conv9", "--index", "1"]) == 1
    err = capsys.readouterr().err
    assert "conv9" in err and model.layer_names()[0] in err and err.count("\n") == 1
    assert main(["show-activations", str(run_dir), "--index", "99999"]) == 1
    assert main(["show-activations", str(run_dir)]) == 1
    assert main(["show-activations", str(run_dir), "--index", "1", "--cmap", "nope"]) == 1
    assert "colormap" in capsys.readouterr().err


def test_compare(run, capsys):
    run_dir, model = run
    assert main(["compare", str(run_dir), "--a", "label=4", "--b", "label=9", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "red" in out and "AUC" in out
    first_layer = model.layer_names()[0]
    assert f"compare-4-9-{first_layer}.png" in {p.name for p in (run_dir / "figures").iterdir()}
    assert (run_dir / "figures" / "compare-4-9-ranking.png").exists()
    assert (
        main(
            [
                "compare", str(run_dir), "--a", "label=4", "--b", "label=9", "--a-indices", "32,33",
                "--b-indices", "72",
            ]
        )
        == 0
    )
    assert main(["compare", str(run_dir), "--a", "nonsense", "--b", "label=9"]) == 1


def test_ambiguous_confusions_oip(run, capsys):
    run_dir, model = run
    assert main(["ambiguous", str(run_dir), "--pair", "4,9", "--n", "3"]) == 0
    assert "margin" in capsys.readouterr().out
    assert (run_dir / "figures" / "ambiguous-4-9.png").exists()
    assert main(["ambiguous", str(run_dir), "--pair", "4"]) == 2

    assert main(["confusions", str(run_dir), "--top", "3"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert (run_dir / "figures" / "confusion.png").exists() and (
        run_dir / "figures" / "confused-pairs.png"
    ).exists()

    assert main(["oip", str(run_dir), "--maps", "0-2", "--steps", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    layer = model.layer_names()[0]
    assert f"{layer}: 3 units, 5 steps" in out
    saved = np.load(run_dir / "figures" / f"oip-{layer}.npz")
    assert list(saved["units"]) == [0, 1, 2] and saved["images"].shape == (3, 28, 28)
    assert main(["oip", str(run_dir), "--maps", "0-999"]) == 1

    # `report` runs end to end in test_inspect_engines.py; here only its error path.
    assert main(["report", str(run_dir / "missing")]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["confusions", "RUN", "--top", "-1"],
        ["confusions", "RUN", "--per-pair", "0"],
        ["show-activations", "RUN", "--label", "4", "--n", "0"],
        ["compare", "RUN", "--a", "4", "--b", "9", "--top", "0"],
        ["ambiguous", "RUN", "--n", "-2"],
        ["oip", "RUN", "--cols", "0"],
        ["data", "show", "--first", "-1", "--out", "OUT"],
        ["data", "show", "--index", "3", "--cols", "x", "--out", "OUT"],
    ],
)
def test_counts_below_one_are_refused_by_name(argv, tmp_path, capsys):
    # --top -1 once listed every confused pair but the last, and --first -1 wrote an empty figure
    out = tmp_path / "digits.png"
    argv = [str(out) if a == "OUT" else str(tmp_path / "no-run") if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    option = next(a for a in argv if a in ("--top", "--per-pair", "--n", "--cols", "--first"))
    assert f"argument {option}:" in err and ("give 1 or more" in err) and err.count("\n") == 1
    assert not out.exists()


def test_evaluate_and_confusions_show_a_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    """Both once ran the model over the split in silence (about 50 s for a CNN's training split)."""
    import sys

    model, dataset = planted_mlp(), planted_dataset(30)
    assert len(dataset.test_images) > 256  # more than one batch of compute_activations
    run_dir = write_run(
        tmp_path / "run", make_manifest("mlp", {"epochs": 1}, dataset="mnist"), {"w": np.zeros(1)},
        model.preprocess.to_arrays(), [],
    )
    monkeypatch.setattr(mnistlab.models, "load_model", lambda path: model)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda name, **kw: dataset)
    from mnistlab.inspect import confusions as confusions_of

    confusions_of(model, dataset)
    assert capsys.readouterr().err == ""  # no bar unless asked: the CLI asks on a terminal only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    confusions = ["confusions", str(run_dir), "--top", "1", "--per-pair", "1"]
    for command in (["evaluate", str(run_dir)], confusions):
        assert main(command) == 0
        bar = f"activations:   0%|          | 0/{len(dataset.test_images)} [00:00<?, ?image/s]"
        assert bar in capsys.readouterr().err, command
