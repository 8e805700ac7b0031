"""The runs directory as the server sees it: safe name resolution, and models reloaded when a run changes.

Every request names a run relative to the runs directory. Names are checked part by part (no
``..``, no absolute paths, no hidden parts) and the resolved path must still lie inside the runs
directory (a symlink pointing out is refused), so nothing else on disk is reachable. Loaded models
are cached with a signature of their files (inode, size, mtime): a run rewritten on disk is
reloaded on the next request, and a run that disappears or turns unreadable is reported as such.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Dataset, load_dataset
from ..errors import MnistlabError, RunError
from ..inspect.activations import layer_shapes
from ..model_api import InspectableModel
from ..models import load_model
from ..runs import HISTORY_JSON, MANIFEST, PREPROCESS, WEIGHTS, read_history, read_manifest

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*\Z")
MAX_NAME = 200
MAX_DEPTH = 3  # runs/<group>/<subgroup>/<run> at most
_SIGNED_FILES = (MANIFEST, WEIGHTS, PREPROCESS, HISTORY_JSON)


class ApiError(Exception):
    """An answer for the client: HTTP status and a one-line message naming the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class LoadedRun:
    name: str
    path: Path
    signature: tuple
    model: InspectableModel
    manifest: dict[str, Any]
    history: list[dict[str, Any]]
    layer_shapes: dict[str, tuple[int, ...]]
    cache: dict[Any, Any] = field(default_factory=dict)  # per-run results (test predictions, OIPs, ...)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunStore:
    def __init__(
        self,
        runs_dir: str | Path,
        *,
        model_loader: Callable[[Path], InspectableModel] = load_model,
        dataset_loader: Callable[[str], Dataset] = load_dataset,
    ):
        self.runs_dir = Path(runs_dir).expanduser()
        self._model_loader = model_loader
        self._dataset_loader = dataset_loader
        self._runs: dict[str, LoadedRun] = {}
        self._datasets: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    # ----- names and listing -----

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run under the runs directory, read fresh from disk; unreadable runs carry an 'error'."""
        root = self.runs_dir
        if not root.is_dir():
            return []
        found: list[dict[str, Any]] = []
        self._scan(root, root, 0, found)
        return sorted(found, key=lambda r: r["name"])

    def _scan(self, root: Path, directory: Path, depth: int, found: list[dict[str, Any]]) -> None:
        try:
            children = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            try:
                if not child.is_dir() or not _PART.match(child.name):
                    continue
                if not child.resolve().is_relative_to(root.resolve()):
                    continue
            except OSError:
                continue
            name = child.relative_to(root).as_posix()
            if (child / MANIFEST).exists():
                found.append(_summary(name, child))
            elif depth + 1 < MAX_DEPTH:
                self._scan(root, child, depth + 1, found)

    def resolve(self, name: str | None) -> Path:
        """The directory of run ``name``; a 400 for an unsafe name, a 404 for a missing run."""
        if not name:
            raise ApiError(400, "no run given; pass ?run=NAME (GET /api/runs lists them)")
        if len(name) > MAX_NAME:
            raise ApiError(400, f"run name is {len(name)} characters long; names are at most {MAX_NAME}")
        parts = name.split("/")
        if name.startswith(("/", "\\")) or any(not _PART.match(p) for p in parts) or len(parts) > MAX_DEPTH:
            raise ApiError(
                400,
                f"invalid run name {name!r}: use the name shown by GET /api/runs (relative to the runs "
                "directory; no '..', absolute paths or hidden parts)",
            )
        root = self.runs_dir.resolve()
        path = (self.runs_dir / name).resolve()
        if not path.is_relative_to(root):
            raise ApiError(400, f"invalid run name {name!r}: it points outside the runs directory")
        if not (path / MANIFEST).is_file():
            known = [r["name"] for r in self.list_runs()]
            hint = (
                f"available runs: {', '.join(known)}"
                if known
                else f"{self.runs_dir} holds no runs yet; train one"
            )
            raise ApiError(404, f"unknown run {name!r}; {hint}")
        return path

    # ----- loading -----

    def get(self, name: str | None) -> LoadedRun:
        """The loaded run, reloaded when its files changed since the last request."""
        path = self.resolve(name)
        signature = _signature(path)
        with self._lock:
            cached = self._runs.get(name)
            if cached is not None and cached.signature == signature:
                return cached
            try:
                # the loader reads the weights; here only what the page shows besides the model
                manifest, history = read_manifest(path), read_history(path)
                model = self._model_loader(path)
                shapes = layer_shapes(model)
            except FileNotFoundError:
                self._runs.pop(name, None)
                raise ApiError(
                    404, f"run {name!r} disappeared while it was being read; reload the run list"
                ) from None
            except MnistlabError as exc:
                self._runs.pop(name, None)
                raise ApiError(409, f"run {name!r} cannot be loaded: {exc}") from None
            except Exception as exc:  # noqa: BLE001
                # A run half-rewritten on disk (a truncated .npz is a BadZipFile) or written by another
                # version: report it and keep serving; the next request tries again.
                self._runs.pop(name, None)
                raise ApiError(
                    409,
                    f"run {name!r} cannot be loaded ({type(exc).__name__}: {exc}); it may be being "
                    "rewritten, retry",
                ) from None
            loaded = LoadedRun(name, path, signature, model, manifest, history, shapes)
            self._runs[name] = loaded
            return loaded

    def dataset_of(self, loaded: LoadedRun) -> Dataset:
        """The dataset the run was trained on (its manifest's; MNIST for runs that name none)."""
        return self.dataset(str(loaded.manifest.get("dataset") or "mnist"))

    def dataset(self, name: str) -> Dataset:
        with self._lock:
            if name not in self._datasets:
                try:
                    self._datasets[name] = self._dataset_loader(name)
                except MnistlabError as exc:
                    raise ApiError(503, f"dataset {name!r} is not available: {exc}") from None
            return self._datasets[name]


def _signature(path: Path) -> tuple:
    sig: list[Any] = []
    for name in _SIGNED_FILES:
        try:
            st = (path / name).stat()
            sig.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((name, None))
    return tuple(sig)


def _summary(name: str, path: Path) -> dict[str, Any]:
    try:
        manifest = read_manifest(path)
    except (MnistlabError, OSError) as exc:
        return {"name": name, "error": str(exc)}
    metrics = manifest.get("metrics")
    imported = manifest.get("imported")
    return {
        "name": name,
        "kind": manifest.get("kind"),
        "imported": imported.get("file") if isinstance(imported, dict) else None,
        "dataset": manifest.get("dataset"),
        "created": manifest.get("created"),
        "metrics": metrics if isinstance(metrics, dict) else {},
    }


__all__ = ["ApiError", "LoadedRun", "RunError", "RunStore"]
