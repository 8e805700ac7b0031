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
import glob
import io
import json
import os
import platform
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import RunError
from .safe_write import atomic_write_bytes, guard, link_or_copy, pid_alive, replace, temp_dir

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
    try:
        link_or_copy(existing, target)
    except FileNotFoundError:
        raise RunError(
            f"{existing}: missing from the run being rewritten; it was deleted while training ran"
        ) from None


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
    recover(run_dir)
    if run_dir.exists() and not overwrite:
        raise RunError(f"{run_dir}: already exists; choose another --out or delete it first")
    check_replaceable(run_dir)
    parent = run_dir.parent
    with guard(run_dir, "the run", lambda: kept_after_failure(run_dir, manifest), "another --out"):
        tmp = temp_dir(parent, f".{run_dir.name}.partial-{os.getpid()}-")
        try:
            atomic_save_npz(tmp / WEIGHTS, weights)
            atomic_save_npz(tmp / PREPROCESS, preprocess)
            write_history(tmp, history)
            for name, data in (extra_files or {}).items():
                atomic_write_bytes(tmp / name, data)
            for name in carry:
                _carry_over(run_dir / name, tmp / name)
            atomic_write_json(tmp / MANIFEST, manifest)
            _swap_into_place(tmp, run_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return run_dir


def check_replaceable(run_dir: Path) -> None:
    """RunError unless ``run_dir`` is absent, a run or an empty directory: what writing a run may
    move aside and delete (a mistyped --out with --overwrite must not take anything else)."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and (run_dir / MANIFEST).is_file()):
        return
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        return
    raise RunError(
        f"{run_dir}: is not a run (no {MANIFEST}); --overwrite replaces only runs, so choose another "
        "--out or move it away first"
    )


def _swap_into_place(tmp: Path, run_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``run_dir``; the version it replaces is moved aside first and put
    back if the second rename fails. A process killed between the two renames leaves it aside,
    where ``recover`` finds it."""
    old = None
    if run_dir.exists():
        old = run_dir.parent / f".{run_dir.name}.old-{os.getpid()}"
        replace(run_dir, old)
    try:
        replace(tmp, run_dir)
    except BaseException:
        if old is not None:
            os.replace(old, run_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _leftovers(run_dir: Path, tag: str) -> list[Path]:
    """Siblings ``.NAME.TAG-PID...`` left by writers that no longer run (killed mid-write)."""
    found = []
    for path in run_dir.parent.glob(f".{glob.escape(run_dir.name)}.{tag}-*"):
        pid = path.name[len(run_dir.name) + len(tag) + 3:].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def recover(run_dir: Path) -> None:
    """Undo what a writer killed mid-rewrite left: put the previous version back when the run is
    missing, and delete half-written temporaries. Best effort: a read-only place is left as it is."""
    run_dir = Path(run_dir)
    try:
        aside = _leftovers(run_dir, "old")
        if aside and not run_dir.exists():
            os.replace(aside.pop(), run_dir)
        for path in aside + _leftovers(run_dir, "partial"):
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def kept_after_failure(run_dir: Path, attempted: Mapping[str, Any]) -> tuple[str, str | None]:
    """(what is intact in ``run_dir``, the command that continues from it) after a failed rewrite."""
    try:
        kept = json.loads((Path(run_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"nothing was saved in {run_dir}", None
    if not isinstance(kept, dict):
        return f"{run_dir} is unchanged", None
    same_run = attempted.get("epochs_done", 0) or attempted.get("step_in_epoch", 0)
    if kept.get("kind") != "cnn" or not same_run:
        return f"the previous run in {run_dir} is intact", None
    epoch, step = kept.get("epochs_done", 0), kept.get("step_in_epoch", 0)
    where = f"epoch {epoch}" + (f" and {step} steps of the next" if step else "")
    command = f"resume with: mnistlab train cnn --resume {run_dir}"
    target = attempted.get("config", {}).get("epochs")
    if target and target != kept.get("config", {}).get("epochs"):
        command += f" --epochs {target}"
    return f"the last complete checkpoint, {where}, is intact in {run_dir}", command


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

    def _repr_html_(self) -> str:  # Jupyter: a summary table and the curves
        from .notebook import record_html

        return record_html(self)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    recover(run_dir)
    if not run_dir.is_dir():
        raise RunError(_not_a_run(run_dir))
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(_not_a_run(run_dir)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: corrupt manifest ({exc}); train the run again") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None
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


def _not_a_run(run_dir: Path) -> str:
    """Why ``run_dir`` (no directory, or one without a manifest) is not a run, and what to pass instead."""
    if run_dir.is_file():
        return (
            f"{run_dir}: a file, not a run directory; pass the directory that `mnistlab train` or "
            "`mnistlab import` wrote"
        )
    if not run_dir.is_dir():
        return f"{run_dir}: no such run directory; pass a directory written by `mnistlab train`"
    if any((run_dir / name).exists() for name in (WEIGHTS, PREPROCESS, HISTORY_JSON)):
        return f"{run_dir}: incomplete run (no {MANIFEST}); it was interrupted, train it again"
    inside = sorted(str(sub) for sub in run_dir.iterdir() if (sub / MANIFEST).is_file())
    if inside:  # a folder of runs, such as runs/ itself
        shown = ", ".join(inside[:3]) + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
        return f"{run_dir}: a folder of runs, not a run; pass one of them: {shown}"
    return f"{run_dir}: not a run directory (no {MANIFEST}); pass a directory written by `mnistlab train`"


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-epoch history ([] when it has none yet), in today's vocabulary (HISTORY_KEYS)."""
    path = Path(run_dir) / HISTORY_JSON
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: corrupt ({exc}); train the run again") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise RunError(f"{path}: not a list of per-epoch records; train the run again")
    return [{_OLD_HISTORY_KEYS.get(key, key): value for key, value in row.items()} for row in history]


def read_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    weights = load_npz(run_dir / WEIGHTS)
    preprocess = load_npz(run_dir / PREPROCESS)
    return RunRecord(run_dir, manifest, weights, preprocess, read_history(run_dir))
