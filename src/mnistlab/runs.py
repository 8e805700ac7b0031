"""Run directories: everything needed to reload and analyse a trained model.

Layout (format 1)::

    RUN/
      run.json          manifest: format, kind ("mlp" | "cnn"), config, dataset, metrics, versions
      weights.npz       model parameters as plain arrays (loaded with allow_pickle=False)
      preprocess.npz    fitted preprocessing parameters (see mnistlab.data.preprocess)
      history.json      one dict per epoch (keys in HISTORY_KEYS' vocabulary)
      history.csv       the same, for spreadsheets
      (engine-specific extras, e.g. checkpoints/ for the CNN; figures/ from `evaluate`)

A run is written into a hidden temporary sibling and renamed into place, so a crash never leaves a
directory that looks complete. ``run.json`` is the completion marker: it is written last.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import RunError

RUN_FORMAT = 1
MANIFEST = "run.json"
WEIGHTS = "weights.npz"
PREPROCESS = "preprocess.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
KINDS = ("mlp", "cnn")
# The per-epoch keys both engines write where they apply (engines may add their own, e.g.
# "val_loss", "train_seconds"): one vocabulary, so every reader can treat runs alike.
HISTORY_KEYS = ("epoch", "loss", "train_accuracy", "val_accuracy", "test_accuracy", "lr", "seconds")
# Keys of runs written by earlier versions -> today's, translated when a history is read.
_OLD_HISTORY_KEYS = {"cost": "loss", "reg_cost": "reg_loss", "time_cost": "time_loss"}


def library_versions() -> dict[str, str]:
    """Versions of what produced a run; torch only if it is already imported (never import it here)."""
    import sys

    versions = {"mnistlab": __version__, "python": platform.python_version(), "numpy": np.__version__}
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = torch.__version__
    return versions


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give what a plain open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    )


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as the bytes of an .npz file (what atomic_save_npz writes)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def atomic_save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    atomic_write_bytes(path, npz_bytes(arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load arrays saved by atomic_save_npz; object arrays are refused (no pickle, ever)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run is incomplete (train it again)") from None
    except (ValueError, zipfile.BadZipFile) as exc:
        raise RunError(
            f"{path}: unreadable ({exc}); the file is corrupt or not written by mnistlab"
        ) from None
    except OSError as exc:
        raise RunError(f"{path}: unreadable ({exc}); the file is corrupt or truncated") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def history_to_csv(history: list[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in keys})
    return out.getvalue()


def write_history(run_dir: Path, history: list[Mapping[str, Any]]) -> None:
    atomic_write_json(Path(run_dir) / HISTORY_JSON, list(history))
    atomic_write_bytes(Path(run_dir) / HISTORY_CSV, history_to_csv(history).encode())


def make_manifest(kind: str, config: Mapping[str, Any], *, dataset: str, **extra: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; expected one of {', '.join(KINDS)}")
    return {
        "format": RUN_FORMAT,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset,
        "config": dict(config),
        "versions": library_versions(),
        **extra,
    }


def _carry_over(existing: Path, target: Path) -> None:
    """Take a file unchanged from the run being replaced: a hard link (a copy where the filesystem
    has none). A training run is rewritten whole after every epoch while its earlier epoch
    checkpoints stay as they are; carrying them keeps a long run's writes linear in its epochs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(existing, target)
    except FileNotFoundError:
        raise RunError(
            f"{existing}: missing from the run being rewritten; it was deleted while training ran"
        ) from None
    except OSError:
        shutil.copyfile(existing, target)


def write_run(
    run_dir: Path,
    manifest: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    preprocess: Mapping[str, np.ndarray],
    history: list[Mapping[str, Any]],
    *,
    overwrite: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
    carry: Iterable[str] = (),
) -> Path:
    """Write a complete run atomically: a temporary sibling directory renamed into place.

    An existing run is replaced only with ``overwrite=True``; it is moved aside first and deleted
    only after the new run is in place, so a crash loses neither. ``extra_files`` are written;
    ``carry`` names files of the run being replaced that go over unchanged.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise RunError(f"{run_dir}: already exists; choose another --out or delete it first")
    parent = run_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".partial", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a run directory gets the usual permissions
    except OSError as exc:
        raise RunError(
            f"{parent}: cannot create the run directory ({exc.strerror}); choose a writable --out"
        ) from None
    try:
        atomic_save_npz(tmp / WEIGHTS, weights)
        atomic_save_npz(tmp / PREPROCESS, preprocess)
        write_history(tmp, history)
        for name, data in (extra_files or {}).items():
            atomic_write_bytes(tmp / name, data)
        for name in carry:
            _carry_over(run_dir / name, tmp / name)
        atomic_write_json(tmp / MANIFEST, manifest)
        old = None
        if run_dir.exists():
            old = parent / f".{run_dir.name}.old-{os.getpid()}"
            os.replace(run_dir, old)
        os.replace(tmp, run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


@dataclass
class RunRecord:
    """A run directory read back: the manifest and arrays, not yet a model (see mnistlab.models)."""

    path: Path
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray] = field(repr=False)
    preprocess: dict[str, np.ndarray] = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory; pass a directory written by `mnistlab train`")
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(
            f"{run_dir}: incomplete run (no {MANIFEST}); it was interrupted, train it again"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: corrupt manifest ({exc}); train the run again") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != RUN_FORMAT
        or manifest.get("kind") not in KINDS
    ):
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RunError(
            f"{run_dir}: run format {found!r} is not supported by mnistlab {__version__} (expects format "
            f"{RUN_FORMAT}); retrain it with this version"
        )
    return manifest


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-epoch history ([] when it has none yet), in today's vocabulary (HISTORY_KEYS)."""
    path = Path(run_dir) / HISTORY_JSON
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: corrupt ({exc}); train the run again") from None
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise RunError(f"{path}: not a list of per-epoch records; train the run again")
    return [{_OLD_HISTORY_KEYS.get(key, key): value for key, value in row.items()} for row in history]


def read_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    weights = load_npz(run_dir / WEIGHTS)
    preprocess = load_npz(run_dir / PREPROCESS)
    return RunRecord(run_dir, manifest, weights, preprocess, read_history(run_dir))
