"""The inspect commands on tiny models trained by both real engines (a few seconds each), loaded
from their run directories through the ordinary paths: load_model and the dataset named in the run."""

from __future__ import annotations

import numpy as np
import pytest

from _inspect_models import planted_arrays
from mnistlab.cli import main
from mnistlab.data import Dataset, sources
from mnistlab.inspect import compute_activations, optimize_inputs
from mnistlab.models import load_model

pytest.importorskip("torch")


def _dataset(arrays) -> Dataset:
    return Dataset(
        "mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
        sources.DATASETS["mnist"].class_names, "synthetic",
    )


@pytest.fixture(scope="module")
def arrays():
    return planted_arrays(n_per_class=30, seed=1, n_test_per_class=8)


@pytest.fixture(scope="module")
def runs(arrays, tmp_path_factory):
    from mnistlab.cnn import train as train_cnn
    from mnistlab.mlp import MLPConfig, train_on_dataset

    root = tmp_path_factory.mktemp("engine-runs")
    ds = _dataset(arrays)
    cnn = train_cnn(
        ds, out=root / "cnn", progress=False,
        spec="conv:6:3,pool:2,conv:8:3,pool:2,flatten,dense:12,output:10", epochs=2, batch_size=32,
        device="cpu", threads=1,
    ).run_dir
    mlp = train_on_dataset(
        MLPConfig(hidden=(16,), epochs=3, batch_size=50, lr=0.05), ds, out=root / "mlp"
    ).run_dir
    return {"cnn": cnn, "mlp": mlp}


@pytest.fixture
def data_dir(arrays, tmp_path, monkeypatch):
    """The planted arrays served as 'mnist' from an IDX directory, pinned like the real thing."""
    from conftest import write_idx_dir

    directory = tmp_path / "idx"
    write_idx_dir(directory, arrays)
    info = sources.DatasetInfo(
        "mnist", sources.DATASETS["mnist"].class_names, sources.array_checksums(arrays), ()
    )
    monkeypatch.setitem(sources.DATASETS, "mnist", info)
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(directory))
    return directory


@pytest.mark.parametrize("engine", ["cnn", "mlp"])
def test_cli_on_trained_engines(engine, runs, data_dir, capsys, tmp_path):
    run = str(runs[engine])
    model = load_model(run)
    first = model.layer_names()[0]
    out = tmp_path / "figs"
    assert main(["show-activations", run, "--index", "32,72", "--out", str(out / "acts.png")]) == 0
    assert main(["compare", run, "--a", "label=4", "--b", "label=9", "--n", "2", "--out", str(out)]) == 0
    assert "AUC" in capsys.readouterr().out
    assert main(["ambiguous", run, "--pair", "4,9", "--n", "2", "--out", str(out / "amb.png")]) == 0
    assert main(["confusions", run, "--out", str(out)]) == 0
    assert main(["oip", run, "--steps", "5", "--maps", "0-3", "--out", str(out / "oip.png")]) == 0
    assert (
        main(
            [
                "attribute", run, "--index", "32", "--method", "ig", "--target", "4,9", "--steps", "8",
                "--sanity", "--out", str(out / "attr.png"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "completeness: sum of map" in printed and "cascading randomization" in printed
    assert main(
        ["attribute", run, "--index", "32", "--method", "gradcam", "--out", str(out / "cam.png")]
    ) == (0 if engine == "cnn" else 1)
    if engine == "mlp":
        assert "mnistlab: error: gradcam needs a layer of maps" in capsys.readouterr().err
    assert main(["report", run, "--oip-steps", "5", "--out", str(out / "report.html")]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "amb.png", "confusion.png", "confused-pairs.png", "oip.png", "oip.npz", "report.html", "attr.png",
    } <= names
    assert any(n.startswith("acts-") for n in names) or "acts.png" in names
    assert f"compare-4-9-{first}.png" in names
    text = (out / "report.html").read_text()
    assert all(
        f'<section id="{k}">' in text
        for k in ("summary", "training", "confusions", "compare", "ambiguous", "attribution", "oip")
    )
    assert "could not be built" not in text
    assert ("Grad-CAM of" in text) == (engine == "cnn") and "completeness error" in text


@pytest.mark.parametrize("engine", ["cnn", "mlp"])
def test_engine_activations_and_oip(engine, runs, arrays):
    model = load_model(runs[engine])
    images = arrays["test_images"][:9]
    whole = model.activations(images)
    batched = compute_activations(model, images, None, batch_size=4)  # batch seams change nothing
    for name in model.layer_names():
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-5, atol=1e-6)
    layer = [n for n in model.layer_names() if n != "output"][-1]
    result = optimize_inputs(model, layer, steps=30)
    alive = ~result.dead
    assert alive.any()
    assert np.median(result.final[alive] / np.maximum(result.start[alive], 1e-6)) > 3
