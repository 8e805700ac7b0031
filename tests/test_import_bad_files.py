"""Bad model files: one line on stderr, exit code 1, nothing written, nothing executed."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnistlab.cli import main

h5py = pytest.importorskip("h5py")

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def _rezip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _keras_members() -> dict[str, bytes]:
    with zipfile.ZipFile(FIXTURES / "seed.keras") as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _edited_config(edit) -> dict[str, bytes]:
    members = _keras_members()
    config = json.loads(members["config.json"])
    edit(config["config"]["layers"])
    members["config.json"] = json.dumps(config).encode()
    return members


def _h5_copy(tmp_path: Path, name: str, edit) -> Path:
    target = tmp_path / name
    target.write_bytes((FIXTURES / name).read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def _fails(capsys, tmp_path: Path, fmt: str, path: Path, *fragments: str, extra=()) -> str:
    out = tmp_path / "runs" / "imported"
    assert main(["import", fmt, str(path), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert (
        not out.exists() and not any((tmp_path / "runs").glob(".*")) if (tmp_path / "runs").exists() else True
    )
    return err


def test_lambda_with_code_is_refused_without_running_it(capsys, tmp_path):
    _fails(
        capsys, tmp_path, "keras", FIXTURES / "lambda_layer.keras", "Lambda 'doubler' (layer 1)", "never runs"
    )


def test_an_unsupported_layer_is_named_with_class_name_and_position(capsys, tmp_path):
    def to_lstm(layers):
        layers[3]["class_name"] = "LSTM"  # after InputLayer, conv2d, max_pooling2d: the model's layer 3

    path = tmp_path / "lstm.keras"
    _rezip(path, _edited_config(to_lstm))
    _fails(capsys, tmp_path, "keras", path, "LSTM 'conv2d_1' (layer 3)", "not supported")


def test_a_real_recurrent_layer_is_named_not_taken_for_a_nested_model(capsys, tmp_path):
    # Keras 3 keeps an LSTM's weights under layers/lstm/cell/vars, a group below the layer's own
    _fails(capsys, tmp_path, "keras", FIXTURES / "lstm_layer.keras", "LSTM 'lstm' (layer 1)", "not supported")


def test_a_model_inside_the_model_is_named(capsys, tmp_path):
    def nest(layers):
        layers[-1].update(class_name="Sequential")

    path = tmp_path / "nested.keras"
    _rezip(path, _edited_config(nest))
    _fails(capsys, tmp_path, "keras", path, "Sequential 'dense_1' (layer 8)", "a model inside the model")


def test_custom_layer_class_is_named(capsys, tmp_path):
    def custom(layers):
        layers[-1].update(class_name="MyDense", registered_name="Custom>MyDense", module=None)

    path = tmp_path / "custom.keras"
    _rezip(path, _edited_config(custom))
    _fails(capsys, tmp_path, "keras", path, "MyDense 'dense_1' (layer 8)")


@pytest.mark.parametrize("name", ["seed.keras", "seed_tf_keras.h5"])
def test_truncated_files(capsys, tmp_path, name):
    path = tmp_path / name
    data = (FIXTURES / name).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(capsys, tmp_path, "keras", path, "truncated")


@pytest.mark.parametrize("entry", ["../escape.txt", "/etc/passwd-copy", "a/../../up.txt", "C:\\evil.txt"])
def test_zip_entries_that_escape_are_refused(capsys, tmp_path, entry):
    path = tmp_path / "slip.keras"
    _rezip(path, {**_keras_members(), entry: b"x"})
    _fails(capsys, tmp_path, "keras", path, repr(entry), "outside the archive")


def test_a_zip_bomb_is_refused_before_it_is_unpacked(capsys, tmp_path):
    members = _keras_members()
    members["model.weights.h5"] = bytes(64 * 2**20)  # 64 MB of zeros deflate about 1000:1
    path = tmp_path / "bomb.keras"
    _rezip(path, members)
    assert path.stat().st_size < 1_000_000
    _fails(capsys, tmp_path, "keras", path, "zip bomb")


def test_a_lying_size_header_is_caught_while_reading(tmp_path):
    """Only the bytes read count: a member that unpacks past the limit is cut off and refused."""
    from mnistlab.errors import ModelFileError
    from mnistlab.importers import safe_files

    path = tmp_path / "big.keras"
    _rezip(path, {"config.json": b"{}", "model.weights.h5": bytes(3000)})
    original = safe_files.MAX_MEMBER_BYTES
    safe_files.MAX_MEMBER_BYTES = 1000
    try:
        with pytest.raises(ModelFileError, match="refusing"):
            safe_files.read_zip_members(path, path.read_bytes(), ("config.json", "model.weights.h5"))
    finally:
        safe_files.MAX_MEMBER_BYTES = original


def test_missing_weights(capsys, tmp_path):
    path = _h5_copy(tmp_path, "seed_keras3.h5", lambda f: f.__delitem__("model_weights/dense/dense/kernel"))
    _fails(capsys, tmp_path, "keras", path, "missing")


def test_mis_shaped_weights(capsys, tmp_path):
    def halve(layers):
        layers[1]["config"]["filters"] = 16  # the stored kernel has 32

    path = tmp_path / "shape.keras"
    _rezip(path, _edited_config(halve))
    _fails(capsys, tmp_path, "keras", path, "Conv2D 'conv2d' (layer 1)", "kernel has shape (3, 3, 1, 32)")


def test_weights_in_another_file_are_refused(capsys, tmp_path):
    def external(f):
        del f["model_weights/dense/dense/kernel"]
        f["model_weights/dense/dense/kernel"] = h5py.ExternalLink("/etc/hostname", "/data")

    path = _h5_copy(tmp_path, "seed_keras3.h5", external)
    _fails(capsys, tmp_path, "keras", path, "links to another file")


def test_an_input_other_than_28x28x1_is_refused(capsys, tmp_path):
    def bigger(layers):
        layers[0]["config"]["batch_shape"] = [None, 32, 32, 3]

    path = tmp_path / "rgb.keras"
    _rezip(path, _edited_config(bigger))
    _fails(capsys, tmp_path, "keras", path, "(32, 32, 3)", "28x28x1")


def test_outputs_the_dataset_does_not_have(capsys, tmp_path):
    def five(f):
        dense = f["model_weights/dense_1/dense_1"]
        kernel, bias = dense["kernel"][()], dense["bias"][()]
        del dense["kernel"], dense["bias"]
        dense["kernel"], dense["bias"] = kernel[:, :5], bias[:5]
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][-1]["config"]["units"] = 5
        f.attrs["model_config"] = json.dumps(config)

    path = _h5_copy(tmp_path, "seed_keras3.h5", five)
    _fails(capsys, tmp_path, "keras", path, "gives 5 outputs but the dataset has 10 classes")


def test_not_a_model_file_and_missing_file(capsys, tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("hello, not a model")
    _fails(capsys, tmp_path, "keras", path, "neither a .keras zip nor an HDF5")
    _fails(capsys, tmp_path, "keras", tmp_path / "absent.h5", "no such file")
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    _fails(capsys, tmp_path, "keras", weights_only, "weights only")


def test_a_failed_import_keeps_the_run_that_was_there(capsys, tmp_path):
    out = tmp_path / "runs" / "imported"
    assert main(["import", "keras", str(FIXTURES / "dense_mlp.keras"), "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert (
        main(["import", "keras", str(FIXTURES / "lambda_layer.keras"), "--out", str(out), "--overwrite"]) == 1
    )
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_overwrite_of_something_that_is_no_run_keeps_it(capsys, tmp_path):
    model = FIXTURES / "dense_mlp.keras"
    kept = tmp_path / "runs"
    (kept / "older-run").mkdir(parents=True)
    (kept / "older-run" / "run.json").write_text("{}")
    copy = tmp_path / "model.keras"
    copy.write_bytes(model.read_bytes())
    for out in (kept, copy):  # `--out runs` for `--out runs/x`; the model file named as --out
        assert main(["import", "keras", str(copy), "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
        assert "is not a run (no run.json); --overwrite replaces only runs" in err
    assert (kept / "older-run" / "run.json").read_text() == "{}"
    assert copy.read_bytes() == model.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "runs"]


def test_a_file_of_another_format_names_the_command_that_reads_it(capsys, tmp_path):
    keras_file, h5_file = FIXTURES / "dense_mlp.keras", FIXTURES / "seed_tf_keras.h5"
    _fails(capsys, tmp_path, "onnx", keras_file, "a Keras .keras file", "mnistlab import keras")
    _fails(capsys, tmp_path, "onnx", h5_file, "HDF5", "mnistlab import keras")
    run = tmp_path / "mlp-run"
    assert main(["import", "keras", str(keras_file), "--out", str(run)]) == 0
    onnx_file = tmp_path / "mlp.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_file)]) == 0
    capsys.readouterr()
    _fails(capsys, tmp_path, "keras", onnx_file, "an ONNX model", "mnistlab import onnx")


def test_pytorch_checkpoints_and_pickles_point_to_onnx_and_from_torch(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint, legacy = tmp_path / "model.pt", tmp_path / "legacy.pth"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    torch.save(net.state_dict(), checkpoint)
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    for fmt in ("keras", "onnx"):
        for path in (checkpoint, legacy):
            _fails(capsys, tmp_path, fmt, path, "never unpickles", "torch.onnx.export", "from_torch")


def test_a_tensorflow_savedmodel_says_how_to_convert_it(capsys, tmp_path):
    # the layout TensorFlow's model.save("dir") / model.export("dir") writes (contents irrelevant)
    saved = tmp_path / "my_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    for fmt in ("keras", "onnx"):
        for path in (saved, saved / "saved_model.pb"):
            _fails(capsys, tmp_path, fmt, path, "TensorFlow SavedModel", "tf2onnx", "model.save(")
