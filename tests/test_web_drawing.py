"""MNIST-style normalization of drawings: a digit drawn anywhere, at any size, comes back as in MNIST."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.data.drawing import _area_matrix, check_drawing, normalize_drawing
from mnistlab.errors import ConfigError


def _ring_digit() -> np.ndarray:
    """A synthetic '0' laid out as MNIST would (20 px box, centre of mass at 14): big ellipse, normalized."""
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.sqrt(((yy - 100) / 90.0) ** 2 + ((xx - 100) / 60.0) ** 2)
    big = np.clip(1 - np.abs(r - 0.85) / 0.15, 0, 1) * 255
    big[150:185, 120:140] = 255  # a lump, so the centre of mass is not an exact tie between two pixels
    digit = normalize_drawing(big)
    rows = np.flatnonzero(digit.any(1))
    assert rows[-1] - rows[0] + 1 == 20
    return digit


def _enlarge(img: np.ndarray, factor: float) -> np.ndarray:
    n = round(img.shape[0] * factor)
    r = _area_matrix(img.shape[0], n)
    return np.clip(r @ img @ r.T, 0, 255)


def _place(img: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    canvas = np.zeros(shape, np.float32)
    canvas[top : top + img.shape[0], left : left + img.shape[1]] = img
    return canvas


def _com(img: np.ndarray) -> tuple[float, float]:
    idx = np.arange(img.shape[0])
    m = img.sum()
    return float(img.sum(1) @ idx / m), float(img.sum(0) @ idx / m)


def test_output_is_mnist_sized_boxed_and_centred():
    drawing = _place(np.full((150, 40), 255.0), (400, 300), 30, 220)  # a tall bar in a corner: a '1'
    out = normalize_drawing(drawing)
    assert out.shape == (28, 28) and out.dtype == np.float32
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert rows[-1] - rows[0] + 1 == 20  # the longer side fills the 20 px box
    assert cols[-1] - cols[0] + 1 == round(40 * 20 / 150)  # aspect ratio kept
    cy, cx = _com(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out.max() == pytest.approx(255.0)


@pytest.mark.parametrize(
    "factor, top, left", [(5, 37, 101), (3.7, 3, 90), (10, 0, 0), (2.2, 180, 250), (1, 290, 300)]
)
def test_an_enlarged_shifted_digit_comes_back_near_its_original(factor, top, left):
    original = _ring_digit()
    drawing = _place(_enlarge(original, factor), (330, 340), top, left)
    out = normalize_drawing(drawing)
    assert np.corrcoef(out.ravel(), original.ravel())[0, 1] > 0.95
    assert np.abs(out - original).mean() < 12  # grey levels on 0..255


def test_faint_thin_strokes_are_stretched_to_full_ink():
    drawing = np.zeros((200, 200))
    drawing[40:160, 99:101] = 60  # light and thin
    out = normalize_drawing(drawing)
    assert out.max() == pytest.approx(255.0)


def test_empty_drawing_gives_a_blank_image():
    assert not normalize_drawing(np.zeros((280, 280), np.uint8)).any()


def test_a_single_dot_does_not_crash():
    drawing = np.zeros((280, 280))
    drawing[100, 100] = 255
    out = normalize_drawing(drawing)
    assert out.max() == pytest.approx(255.0) and (out > 0).sum() >= 1


def test_uint8_and_bool_inputs_work():
    d = np.zeros((50, 50), np.uint8)
    d[10:40, 20:30] = 255
    np.testing.assert_allclose(normalize_drawing(d), normalize_drawing(d.astype(bool) * 255.0))


def test_area_matrix_rows_sum_to_one():
    for n_in, n_out in [(280, 20), (7, 20), (20, 20), (1, 3)]:
        np.testing.assert_allclose(_area_matrix(n_in, n_out).sum(1), 1.0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 28, 28)), "2-D"),
        (np.zeros(28), "2-D"),
        (np.full((10, 10), 256.0), "0..255"),
        (np.full((10, 10), -1.0), "0..255"),
        (np.full((10, 10), np.nan), "NaN"),
        (np.zeros((2000, 10)), "between"),
        (np.zeros((0, 10)), "between"),
        (np.array([["a"]]), "numbers"),
    ],
)
def test_bad_drawings_raise_one_clear_config_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        check_drawing(bad)
    with pytest.raises(ConfigError):
        normalize_drawing(bad)


@pytest.mark.slow
def test_real_mnist_digits_survive_enlarging_and_moving(real_home):
    from mnistlab.data import load_dataset

    images = load_dataset("mnist").test_images[:300].astype(np.float32)
    exact, corr = 0, []
    for i, digit in enumerate(images):
        # 5x enlargement in a larger canvas, as if drawn on the page's 280 px pad
        drawing = _place(np.kron(digit, np.ones((5, 5))), (300, 320), 7 * (i % 20), 3 * (i % 50))
        out = normalize_drawing(drawing)
        exact += np.allclose(out, digit * (255.0 / digit.max()), atol=1e-3)
        drawing = _place(_enlarge(digit, 3.7), (200, 200), i % 90, 90)
        corr.append(np.corrcoef(normalize_drawing(drawing).ravel(), digit.ravel())[0, 1])
    # MNIST's own digits fill 20 px and sit at their centre of mass: most come back pixel-exact;
    # the rest are one pixel off where the centre of mass rounds the other way.
    assert exact >= 0.95 * len(images)
    assert np.median(corr) > 0.98 and np.mean(np.array(corr) > 0.9) > 0.9


def test_a_faint_drawing_is_stretched_without_overflow():
    """Ink of a subnormal grey level (found by the fuzz test) stretches to 255 like any other."""
    faint = np.zeros((50, 50))
    faint[10:30, 20:25] = 2.2e-309
    bold = np.zeros((50, 50))
    bold[10:30, 20:25] = 200.0
    np.testing.assert_array_equal(normalize_drawing(faint), normalize_drawing(bold))
