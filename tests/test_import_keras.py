"""Keras files imported without TensorFlow give Keras's own probabilities on real MNIST images.

The fixtures (tests/fixtures/keras) were written once by scripts/make_keras_fixtures.py with Keras 3
and tf_keras, together with Keras's probabilities for the test images listed in expected.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.importers import import_model, original_names
from mnistlab.models import load_model
from mnistlab.runs import read_manifest

pytest.importorskip("h5py")

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
MODELS = EXPECTED["models"]


@pytest.fixture(scope="module")
def mnist_images(mnist_test_images):
    return mnist_test_images[EXPECTED["indices"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_imported_probabilities_equal_keras_on_mnist(name, mnist_images, tmp_path):
    expected = MODELS[name]
    run = import_model("keras", FIXTURES / name, tmp_path / "run")
    model = load_model(run)
    probabilities = model.predict_proba(mnist_images)
    difference = float(np.abs(probabilities - np.asarray(expected["probabilities"])).max())
    print(f"{name}: largest probability difference {difference:.2e}", file=sys.stderr)
    assert difference < 1e-5
    assert read_manifest(run)["imported"]["preprocess"] == expected["preprocess"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_and_engine_match_the_keras_model(name, tmp_path, capsys):
    expected = MODELS[name]
    run = import_model("keras", FIXTURES / name, tmp_path / "run")
    manifest = read_manifest(run)
    if manifest["kind"] == "cnn":
        assert main(["summary", str(run)]) == 0
        total = re.search(r"Total params: ([\d,]+)", capsys.readouterr().out).group(1)
        assert int(total.replace(",", "")) == expected["params"]
    else:
        model = load_model(run)
        assert sum(v.size for v in model.get_params().values()) == expected["params"]
    # a Dense-only model with one hidden activation is the NumPy MLP's; everything else a CNN
    assert manifest["kind"] == ("mlp" if expected["model"] == "dense_mlp" else "cnn")
    # every original layer with weights is named beside mnistlab's layers
    shown = " ".join(original_names(manifest).values())
    for layer in expected["layers"]:
        if not layer.startswith(("input", "pixels", "reshape", "rescaling")):  # folded into preprocessing
            assert layer in shown, (layer, shown)


def test_weights_follow_layer_order_not_sorted_names(tmp_path):
    """conv2d_10 sorts before conv2d_2; the importer must not care (shapes would not even fit)."""
    run = import_model("keras", FIXTURES / "name_order.keras", tmp_path / "run")
    sources = original_names(read_manifest(run))
    assert [sources[f"conv{i}"] for i in (1, 2, 3)] == [
        "conv2d_2 (Conv2D)",
        "conv2d_10 (Conv2D)",
        "conv2d_1 (Conv2D)",
    ]
    weights = load_model(run).net.state_dict()
    assert [tuple(weights[f"conv{i}.conv.weight"].shape[:2]) for i in (1, 2, 3)] == [(3, 1), (4, 3), (5, 4)]


def test_stride_two_same_padding_dilation_and_bn_map_onto_the_spec(tmp_path):
    run = import_model("keras", FIXTURES / "strided_same.keras", tmp_path / "run")
    spec = read_manifest(run)["spec_string"]
    assert spec.startswith(
        "conv:6:3:stride=2:pad=tf_same:bias=False,bn:eps=0.001,conv:8:4:stride=2:pad=tf_same"
    )
    assert "dilation=2" in spec and "avgpool:2" in spec and "pool:2:stride=1" in spec
    # Rescaling(1/255, offset=-0.1) became the preprocessing: raw pixels in, no rescaling layer left
    pre = load_model(run).preprocess
    assert pre.kind == "affine"
    np.testing.assert_allclose(pre(np.full((1, 28, 28), 255.0)), 0.9, rtol=1e-6)
    legacy = read_manifest(import_model("keras", FIXTURES / "conv_legacy_tf_keras.h5", tmp_path / "legacy"))
    assert "bn:eps=0.001:after_act=True" in legacy["spec_string"] and ",gap," in legacy["spec_string"]


def test_cli_import_writes_a_run_every_command_opens(tmp_path, capsys):
    out = tmp_path / "runs" / "seed"
    assert main(["import", "keras", str(FIXTURES / "seed_tf_keras.h5"), "--out", str(out)]) == 0
    assert "conv1      <- conv2d (Conv2D)" in capsys.readouterr().err
    assert main(["layers", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "conv1" and lines[0].endswith("conv2d (Conv2D)")
    assert main(["import", "keras", str(FIXTURES / "seed.keras"), "--out", str(out)]) == 1
    assert "already exists; choose another --out or add --overwrite" in capsys.readouterr().err
    assert main(["import", "keras", str(FIXTURES / "seed.keras"), "--out", str(out), "--overwrite"]) == 0
    assert read_manifest(out)["imported"]["file"] == "seed.keras"


def test_resuming_an_imported_run_says_why_not(tmp_path, capsys):
    run = import_model("keras", FIXTURES / "name_order.keras", tmp_path / "run")
    assert main(["train", "cnn", "--resume", str(run), "--epochs", "1", "--no-progress"]) == 1
    assert "imported from name_order.keras, not trained here" in capsys.readouterr().err
