"""The IDX format of MNIST's files: a 4-byte magic (0, 0, dtype code, number of dimensions), the
dimensions as big-endian uint32, then the data in C order, big-endian. Plain or gzip-compressed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError

# dtype code -> big-endian numpy dtype, as defined by the format
DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}


def _open_bytes(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc}); download the file again") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes); the file is truncated")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(
            f"{name}: wrong magic number 0x{data[:4].hex()} (an IDX file starts with two zero bytes); not "
            "an IDX file"
        )
    if code not in DTYPES:
        raise DataError(
            f"{name}: unknown IDX dtype code 0x{code:02x} (valid: "
            f"{', '.join(f'0x{c:02x}' for c in DTYPES)}); the file is corrupt"
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX file declares 0 dimensions; the file is corrupt")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header; download the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(
            f"{name}: IDX file {what}: dimensions {dims} need {expected} bytes of data, found {body}; "
            "download the file again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a native-endian array; every field is validated."""
    path = Path(path)
    try:
        data = _open_bytes(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    return parse_idx(data, str(path))


def to_idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    code = CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"cannot write dtype {array.dtype} as IDX; use one of {', '.join(str(d) for d in CODES)}"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"cannot write an array with {array.ndim} dimensions as IDX")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as IDX; a path ending in .gz is gzip-compressed."""
    from ..safe_write import atomic_write_bytes, guard

    path = Path(path)
    data = to_idx_bytes(array)
    with guard(path, "the IDX file", "nothing was written", "another path"):
        atomic_write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
