"""Opening model files that may be hostile: size limits, zip-slip and zip-bomb checks, HDF5
datasets reached only through plain links. Nothing here executes anything from the file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import ModelFileError

# An MNIST model worth opening here is a few MB; these bounds leave a wide margin and stop a file
# from making the importer allocate without limit.
MAX_FILE_BYTES = 512 * 2**20
MAX_MEMBER_BYTES = 512 * 2**20
MAX_COMPRESSION_RATIO = 200  # deflate reaches about 1000:1 only on degenerate (bomb-like) data
MAX_CONFIG_BYTES = 16 * 2**20


def read_file_bytes(path: Path) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ModelFileError(
                f"{path}: {size / 2**20:.0f} MB is larger than any MNIST model mnistlab imports "
                f"({MAX_FILE_BYTES // 2**20} MB)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        if (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path}: {SAVED_MODEL}") from None
        raise ModelFileError(f"{path}: is a directory; give the model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror})") from None


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
SAVED_MODEL = (
    "a TensorFlow SavedModel, which mnistlab cannot read without TensorFlow; in TensorFlow save the "
    "Keras model with model.save('m.keras'), or convert it with `python -m tf2onnx.convert "
    "--saved-model DIR --output m.onnx`, and import that file"
)
_PYTORCH = (
    "which mnistlab never unpickles (loading it could run code); export the module with "
    "torch.onnx.export and `mnistlab import onnx` the file, or wrap it with mnistlab.from_torch in Python"
)


def refuse_other_format(path: Path, data: bytes, asked: str) -> None:
    """Raise ModelFileError naming what the file is instead and the fix, when it is recognizably
    something other than an ``asked`` ("keras" or "onnx") model file; else return."""
    other = _other_format(path, data, asked)
    if other:
        raise ModelFileError(f"{path}: {other}")


def _other_format(path: Path, data: bytes, asked: str) -> str | None:
    # told apart by content (and a SavedModel's or ONNX file's name), never by unpickling anything
    if path.name == "saved_model.pb":
        return SAVED_MODEL
    if data[:4] == ZIP_MAGIC:
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, EOFError, ValueError):
            return None
        if any(PurePosixPath(name).name == "data.pkl" for name in names):  # torch.save's zip layout
            return f"a PyTorch checkpoint (torch.save), {_PYTORCH}"
        if "config.json" in names and asked != "keras":
            return "a Keras .keras file; import it with `mnistlab import keras`"
        return None
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a Python pickle (an older torch.save), {_PYTORCH}"
    if data[:8] == HDF5_MAGIC and asked != "keras":
        return "an HDF5 file (Keras .h5); import it with `mnistlab import keras`"
    if path.suffix.lower() == ".onnx" and asked != "onnx":
        return "an ONNX model; import it with `mnistlab import onnx`"
    return None


def unsafe_member_name(name: str) -> bool:
    """Absolute paths, drive letters and '..' components: entries that would escape a directory."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return (
        posix.is_absolute()
        or windows.is_absolute()
        or bool(windows.drive)
        or ".." in posix.parts
        or ".." in windows.parts
    )


def read_zip_members(path: Path, data: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The wanted members of a zip archive, after checking every entry's name and sizes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ModelFileError(
            f"{path}: not a readable zip archive ({exc}); the file is truncated or not a .keras file"
        ) from None
    for info in infos:
        if unsafe_member_name(info.filename):
            raise ModelFileError(
                f"{path}: zip entry {info.filename!r} points outside the archive; refusing the file"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise ModelFileError(
                f"{path}: zip entry {info.filename!r} unpacks to {info.file_size} bytes; refusing the file"
            )
        if info.file_size > 2**20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ModelFileError(
                f"{path}: zip entry {info.filename!r} expands "
                f"{info.file_size // max(info.compress_size, 1)}:1 "
                "(a zip bomb?); refusing the file"
            )
    names = {info.filename for info in infos}
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ModelFileError(f"{path}: the archive has no {missing[0]}; it is not a Keras 3 .keras file")
    out = {}
    for name in wanted:
        try:
            with archive.open(name) as member:
                # the header's size can lie; never read more than the limit
                content = member.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ModelFileError(
                f"{path}: zip entry {name} is corrupt ({exc}); the file is truncated or damaged"
            ) from None
        if len(content) > MAX_MEMBER_BYTES:
            raise ModelFileError(
                f"{path}: zip entry {name} unpacks to more than {MAX_MEMBER_BYTES} bytes; refusing the file"
            )
        out[name] = content
    return out


def open_h5(path: Path, data: bytes):
    """An h5py File over bytes in memory (read-only); a damaged file is one clear error."""
    from ..extras import require

    h5py = require("h5py", "reading Keras files")
    try:
        return h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{path}: not a readable HDF5 file ({exc}); the file is truncated or damaged"
        ) from None


def h5_array(path: Path, group: Any, key: str) -> np.ndarray:
    """A numeric dataset under ``group``, reached through hard links only (no external files)."""
    import h5py

    node = group
    try:
        for part in [p for p in key.split("/") if p]:
            link = node.get(part, getlink=True)
            if link is None:
                raise ModelFileError(f"{path}: weight {node.name}/{part} is missing; the file is incomplete")
            if not isinstance(link, h5py.HardLink):
                raise ModelFileError(f"{path}: {node.name}/{part} links to another file; refusing the file")
            node = node[part]
        if not isinstance(node, h5py.Dataset):
            raise ModelFileError(f"{path}: {node.name} is not a weight array")
        if node.external or node.is_virtual:
            raise ModelFileError(f"{path}: {node.name} stores its data in another file; refusing the file")
        if node.dtype.kind not in "fiu" or node.size > MAX_MEMBER_BYTES // 4:
            raise ModelFileError(
                f"{path}: {node.name} is not a numeric weight array ({node.dtype}, {node.shape})"
            )
        return np.asarray(node[()], dtype=np.float32)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path}: cannot read weight {key} ({exc}); the file is truncated or damaged"
        ) from None


def h5_names(path: Path, group: Any, attr: str) -> list[str]:
    """A list-of-strings attribute (Keras's layer_names / weight_names)."""
    try:
        values = group.attrs.get(attr)
    except (OSError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path}: cannot read {group.name} attribute {attr} ({exc}); the file is damaged"
        ) from None
    if values is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]
