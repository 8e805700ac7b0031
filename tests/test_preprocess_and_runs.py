import json
import os

import numpy as np
import pytest

from mnistlab import runs
from mnistlab.data import Preprocessor, validation_split
from mnistlab.errors import ConfigError, RunError


def test_standard_is_fitted_on_the_training_split_only():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, (500, 28, 28)).astype(np.uint8)
    test = rng.integers(150, 256, (100, 28, 28)).astype(np.uint8)  # a very different distribution
    pre = Preprocessor.fit("standard", train)
    np.testing.assert_allclose(pre.mean, train.reshape(500, -1).mean(0).reshape(28, 28), rtol=1e-5)
    z_train = pre(train)
    np.testing.assert_allclose(z_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z_train.std(0), 1, atol=1e-3)
    # The test images were not seen: their standardized mean is far from 0 (no leak).
    assert pre(test).mean() > 3


def test_constant_pixels_get_unit_scale():
    train = np.zeros((10, 28, 28), np.uint8)
    train[:, 5, 5] = np.arange(10)
    pre = Preprocessor.fit("standard", train)
    assert pre.scale[0, 0] == 1.0 and np.isfinite(pre(np.full((1, 28, 28), 255, np.uint8))).all()


def test_unit_and_none_and_inversion():
    x = np.array([[[0, 51, 255] + [0] * 25] * 28], np.uint8)
    unit = Preprocessor.fit("unit", x)
    assert unit(x)[0, 0, 1] == pytest.approx(0.2)
    assert Preprocessor.fit("none", x)(x)[0, 0, 2] == 255
    np.testing.assert_allclose(unit.invert(unit(x)), x, atol=1e-4)


def test_preprocessor_survives_a_save_and_load(tmp_path):
    pre = Preprocessor.fit(
        "standard", np.random.default_rng(1).integers(0, 256, (50, 28, 28)).astype(np.uint8)
    )
    runs.atomic_save_npz(tmp_path / "p.npz", pre.to_arrays())
    back = Preprocessor.from_arrays(runs.load_npz(tmp_path / "p.npz"))
    assert back.kind == "standard"
    np.testing.assert_array_equal(back.mean, pre.mean)


def test_bad_preprocessing_name_and_shape():
    with pytest.raises(ConfigError, match="choose one of: standard, unit, none"):
        Preprocessor.fit("zscore", np.zeros((2, 28, 28)))
    with pytest.raises(ConfigError, match=r"shape \(20, 20\).*resize"):
        Preprocessor.fit("unit", np.zeros((2, 28, 28)))(np.zeros((1, 20, 20)))


def test_flattened_rows_are_told_to_reshape_not_resize():
    """(N, 784) rows, as scikit-learn's fetch_openml gives MNIST, once got "resize them first"."""
    from mnistlab.mlp import MLP, MLPConfig

    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    model = MLP(MLPConfig(hidden=(5,)), preprocess=Preprocessor.fit("unit", images))
    for call in (model.predict_proba, model.activations):
        with pytest.raises(ConfigError) as err:
            call(images.reshape(3, 784))
        assert str(err.value) == (
            "images have shape (3, 784): rows of 784 pixels; the model takes (N, 28, 28) images, "
            "so pass images.reshape(-1, 28, 28)"
        )
    np.testing.assert_array_equal(model.predict_proba(images.reshape(3, 784).reshape(-1, 28, 28)),
                                  model.predict_proba(images))


def test_validation_split_last_and_seeded():
    train, val = validation_split(100, 10)
    assert list(val) == list(range(90, 100)) and len(train) == 90
    t1, v1 = validation_split(100, 10, seed=3)
    t2, v2 = validation_split(100, 10, seed=3)
    np.testing.assert_array_equal(v1, v2)
    assert set(t1).isdisjoint(v1) and len(set(t1) | set(v1)) == 100
    with pytest.raises(ConfigError, match="--val 100"):
        validation_split(100, 100)


def _write(tmp_path, name="run", **kw):
    manifest = runs.make_manifest("mlp", {"layers": [3]}, dataset="mnist")
    return runs.write_run(
        tmp_path / name, manifest, {"w": np.ones(3)}, {"kind": np.array("unit")}, [{"epoch": 1, "loss": 0.5}],
        **kw,
    )


def test_old_history_keys_are_read_in_todays_vocabulary(tmp_path):
    """MLP runs written before one vocabulary said cost / reg_cost / time_cost."""
    path = _write(tmp_path)
    old = [{"epoch": 1, "cost": 0.5, "reg_cost": 0.01, "train_accuracy": 0.9, "time_cost": 0.2, "lr": 0.4}]
    (path / "history.json").write_text(json.dumps(old))
    assert runs.read_history(path) == [
        {"epoch": 1, "loss": 0.5, "reg_loss": 0.01, "train_accuracy": 0.9, "time_loss": 0.2, "lr": 0.4}
    ]
    assert runs.read_run(path).history == runs.read_history(path)
    (path / "history.json").write_text('{"epoch": 1}')
    with pytest.raises(RunError, match="not a list of per-epoch records"):
        runs.read_history(path)


def test_both_engines_write_one_history_vocabulary():
    from mnistlab.mlp import MLP, MLPConfig, train

    x = np.random.default_rng(0).normal(size=(40, 6))
    y = np.arange(40) % 3
    history = train(MLP(MLPConfig(input_size=6, hidden=(4,), n_classes=3, epochs=2, val=0)), x, y,
                    test=(x, y), val=(x, y))
    assert set(runs.HISTORY_KEYS) <= set(history[-1]), history[-1]


def test_run_round_trip(tmp_path):
    path = _write(tmp_path)
    record = runs.read_run(path)
    assert record.kind == "mlp" and record.config == {"layers": [3]}
    np.testing.assert_array_equal(record.weights["w"], np.ones(3))
    assert record.history == [{"epoch": 1, "loss": 0.5}]
    assert (path / "history.csv").read_text().splitlines() == ["epoch,loss", "1,0.5"]
    assert record.manifest["versions"]["numpy"] == np.__version__
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # like mkdir, not mkdtemp's 0700


def test_existing_run_is_not_overwritten_unless_asked(tmp_path):
    _write(tmp_path)
    with pytest.raises(RunError, match="already exists"):
        _write(tmp_path)
    _write(tmp_path, overwrite=True)


def test_overwrite_replaces_runs_and_empty_directories_only(tmp_path):
    # --overwrite with a mistyped --out (runs, ., the model file itself) must not delete anything
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="is not a run .no run.json.; --overwrite replaces only runs"):
        _write(tmp_path, overwrite=True)
    assert (run / "notes.txt").read_text() == "keep me"
    (run / "notes.txt").unlink()
    run.rmdir()
    run.write_text("a file")
    with pytest.raises(RunError, match="is not a run"):
        _write(tmp_path, overwrite=True)
    assert (run).read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing moved aside and left over
    run.unlink()
    run.mkdir()  # an empty directory holds nothing to lose
    assert runs.read_run(_write(tmp_path, overwrite=True)).kind == "mlp"


def test_rewriting_a_run_links_unchanged_extra_files(tmp_path):
    """Earlier epoch checkpoints are not rewritten each epoch: files named in ``carry`` are
    hard-linked into the new directory, the others are written, and the contents are right."""
    manifest = runs.make_manifest("cnn", {"layers": [3]}, dataset="mnist")

    def write(files, carry=()):
        return runs.write_run(tmp_path / "r", manifest, {"w": np.ones(3)}, {}, [], overwrite=True,
                              extra_files=files, carry=carry)

    path = write({"checkpoints/epoch-001.npz": b"a" * 1000, "checkpoint.npz": b"state 1"})
    inode = (path / "checkpoints/epoch-001.npz").stat().st_ino
    path = write(
        {"checkpoints/epoch-002.npz": b"b" * 1000, "checkpoint.npz": b"state 2"},
        carry=["checkpoints/epoch-001.npz"],
    )
    assert (path / "checkpoints/epoch-001.npz").stat().st_ino == inode
    second = {
        "checkpoints/epoch-001.npz": b"a" * 1000, "checkpoints/epoch-002.npz": b"b" * 1000,
        "checkpoint.npz": b"state 2",
    }
    for name, data in second.items():
        assert (path / name).read_bytes() == data
    path = write(dict(second, **{"checkpoints/epoch-001.npz": b"c" * 1000}))  # same size, other bytes
    assert (path / "checkpoints/epoch-001.npz").read_bytes() == b"c" * 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(RunError, match="missing from the run being rewritten"):
        write({}, carry=["checkpoints/epoch-009.npz"])


def test_crash_while_writing_leaves_no_run(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runs, "write_history", boom)
    with pytest.raises(RuntimeError):
        _write(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_and_incompatible_runs(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights.npz").write_bytes(b"")
    with pytest.raises(RunError, match="incomplete run"):
        runs.read_run(tmp_path / "half")
    path = _write(tmp_path)
    manifest = json.loads((path / "run.json").read_text())
    manifest["format"] = 99
    (path / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="format 99 is not supported.*retrain"):
        runs.read_run(path)
    with pytest.raises(RunError, match="no such run directory"):
        runs.read_run(tmp_path / "nope")


def test_paths_that_are_not_runs_say_what_to_pass(tmp_path, capsys):
    """The parent runs/ folder, a file of a run and an unrelated folder were all once called an
    interrupted run ("train it again")."""
    from mnistlab.cli import main

    for name in ("b", "a", "c", "d"):
        _write(tmp_path, name)
    listed = ", ".join(str(tmp_path / name) for name in "abc")
    with pytest.raises(RunError) as err:
        runs.read_run(tmp_path)
    assert str(err.value) == f"{tmp_path}: a folder of runs, not a run; pass one of them: {listed} and 1 more"
    with pytest.raises(RunError, match="weights.npz: a file, not a run directory; pass the directory"):
        runs.read_run(tmp_path / "a" / "weights.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="empty: not a run directory \\(no run.json\\); pass a directory"):
        runs.read_run(tmp_path / "empty")
    assert main(["layers", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnistlab: error: {tmp_path}: a folder of runs") and err.count("\n") == 1


def test_weights_with_pickled_objects_are_refused(tmp_path):
    path = _write(tmp_path)
    np.savez(path / "weights.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RunError, match="weights.npz: unreadable"):
        runs.read_run(path)


def test_truncated_weights_are_a_run_error(tmp_path):
    path = _write(tmp_path)
    data = (path / "weights.npz").read_bytes()
    (path / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="weights.npz: unreadable"):
        runs.read_run(path)
