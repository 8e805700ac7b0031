import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnistlab.data.idx import parse_idx, read_idx, to_idx_bytes, write_idx
from mnistlab.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
        elements={"allow_nan": False},
    )
)
def test_round_trip_any_dtype_and_shape(array):
    back = parse_idx(to_idx_bytes(array))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("gz", [True, False])
def test_file_round_trip_plain_and_gzip(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    np.testing.assert_array_equal(read_idx(path), images)


def test_header_layout_matches_the_format():
    data = to_idx_bytes(np.zeros((2, 3), np.uint8))
    assert data[:4] == b"\x00\x00\x08\x02"
    assert struct.unpack(">II", data[4:12]) == (2, 3)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(to_idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: IDX file truncated"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 0))
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(path)


def test_wrong_dtype_code(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00"))
    with pytest.raises(DataError, match="unknown IDX dtype code 0x07"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(to_idx_bytes(np.zeros(10, np.uint8)))[:-6])
    with pytest.raises(DataError, match="x.gz: corrupt gzip"):
        read_idx(path)


def test_trailing_bytes_are_an_error():
    with pytest.raises(DataError, match="trailing bytes"):
        parse_idx(to_idx_bytes(np.zeros(5, np.uint8)) + b"\x00")


def test_big_endian_values_are_decoded():
    data = b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(">ii", 1, -70000)
    np.testing.assert_array_equal(parse_idx(data), [1, -70000])
