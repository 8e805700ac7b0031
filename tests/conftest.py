from __future__ import annotations

import numpy as np
import pytest

from mnistlab.data import sources
from mnistlab.data.idx import write_idx


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own empty cache unless it asks for the real one (see real_home)."""
    home = tmp_path_factory.mktemp("mnistlab-home")
    monkeypatch.setenv("MNISTLAB_HOME", str(home))
    monkeypatch.setenv("MNISTLAB_OFFLINE", "1")
    monkeypatch.delenv("MNISTLAB_DATA_DIR", raising=False)
    return home


@pytest.fixture
def real_home(monkeypatch):
    """The user's real cache, so the real datasets are fetched at most once per machine."""
    monkeypatch.delenv("MNISTLAB_HOME", raising=False)


def synthetic_arrays(n_train: int = 120, n_test: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx_dir(directory, arrays, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in sources.IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])


@pytest.fixture
def synthetic_dataset(tmp_path, monkeypatch):
    """A tiny dataset registered as 'mnist' (with its own pinned checksums) in an IDX directory."""
    arrays = synthetic_arrays()
    directory = tmp_path / "idx"
    write_idx_dir(directory, arrays)
    info = sources.DatasetInfo(
        "mnist", sources.DATASETS["mnist"].class_names, sources.array_checksums(arrays), ()
    )
    monkeypatch.setitem(sources.DATASETS, "mnist", info)
    return directory, arrays


@pytest.fixture(scope="session")
def mnist_test_images():
    """The real MNIST test images from the user's cache (fetched once per machine), loaded once."""
    import os

    from mnistlab.data import load_dataset

    saved = os.environ.pop("MNISTLAB_HOME", None)  # session scope: no monkeypatch; put back below
    try:
        return load_dataset("mnist", progress=False).test_images
    finally:
        if saved is not None:
            os.environ["MNISTLAB_HOME"] = saved
