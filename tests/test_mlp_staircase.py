"""The first layer's staircase (mlp/staircase.py): its products give the dense products' values."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.mlp import staircase


def _rows(n, width, rng, reach=None):
    """uint8 rows whose ink ends at a random column each (``reach``: at that column for all)."""
    rows = rng.integers(1, 256, (n, width)).astype(np.uint8)
    rows *= rng.random((n, width)) < 0.5
    ends = rng.integers(0, width + 1, n) if reach is None else np.full(n, reach)
    rows[np.arange(width) >= ends[:, None]] = 0
    return rows


def _staircase_products(rows, starts, weights, delta, order):
    """Every chunk's first-layer forward and weight gradient, multiplied as the staircase does."""
    n, width = rows.shape
    levels = staircase.reach_levels(rows, 0, width)
    stairs = staircase.Staircase(levels, width, starts, n)
    arranged, steps = stairs.arrange(order)
    results = []
    for lo, hi, chunk in zip(starts, [*starts[1:], n], steps):
        x = rows[arranged[lo:hi]].astype(np.float32)
        z = np.full((hi - lo, weights.shape[1]), np.nan, np.float32)
        for a, b, columns in chunk.forward():
            np.matmul(x[a:b, :columns], weights[:columns], out=z[a:b])
        grad = np.full_like(weights, np.nan)
        grad[chunk.columns[0] :] = 0  # as Backprop zeroes the columns no image of the chunk reaches
        mine, theirs = chunk.gradient()
        for first, end, used in mine + theirs:
            np.matmul(x[:used, first:end].T, delta[: hi - lo][:used], out=grad[first:end])
        results.append((x, z, grad))
    return results


@pytest.mark.parametrize("overhead", [0, staircase.GROUP_OVERHEAD])
def test_staircase_products_equal_dense_products(overhead, monkeypatch):
    """Forward and weight gradient of chunks of uneven length, as groups and column blocks, equal
    the dense products within float32 rounding; every column is written once."""
    monkeypatch.setattr(staircase, "GROUP_OVERHEAD", overhead)
    rng = np.random.default_rng(1)
    rows = _rows(1300, 200, rng)
    weights = rng.standard_normal((200, 24)).astype(np.float32)
    delta = rng.standard_normal((500, 24)).astype(np.float32)
    starts = np.array([0, 500, 1000, 1250])
    chunks = _staircase_products(rows, starts, weights, delta, rng.permutation(1300))
    for x, z, grad in chunks:
        np.testing.assert_allclose(z, x @ weights, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(grad, x.T @ delta[: len(x)], rtol=1e-4, atol=1e-2)
    assert len(chunks[0][0]) == 500


def test_a_chunk_whose_images_all_reach_the_last_column_is_one_dense_product():
    rng = np.random.default_rng(2)
    rows = _rows(500, 100, rng, reach=100)
    rows[:, -1] = 7  # every image inked in the last column
    levels = staircase.reach_levels(rows, 0, 100)
    assert (levels == -(-100 // staircase.STEP)).all()
    (steps,) = staircase.Staircase(levels, 100, np.array([0]), 500).arrange(np.arange(500))[1]
    assert all(columns == 100 for _, _, columns in steps.forward())
    weights = rng.standard_normal((100, 8)).astype(np.float32)
    delta = rng.standard_normal((500, 8)).astype(np.float32)
    ((x, z, grad),) = _staircase_products(rows, np.array([0]), weights, delta, np.arange(500))
    np.testing.assert_allclose(z, x @ weights, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(grad, x.T @ delta, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("reach", [0, 33])
def test_a_chunk_of_one_image(reach):
    """One image (blank, or inked up to column 33): one group of its own columns, not shared by
    threads."""
    rng = np.random.default_rng(3)
    rows = _rows(1, 64, rng, reach=reach)
    if reach:
        rows[0, reach - 1] = 1
    weights = rng.standard_normal((64, 5)).astype(np.float32)
    delta = rng.standard_normal((1, 5)).astype(np.float32)
    ((x, z, grad),) = _staircase_products(rows, np.array([0]), weights, delta, np.arange(1))
    np.testing.assert_allclose(z, x @ weights, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(grad, x.T @ delta, rtol=1e-5, atol=1e-3)
    (p,) = staircase.Staircase(staircase.reach_levels(rows, 0, 64), 64, np.array([0]), 1).plans.values()
    assert p.bounds == (0, 1) and p.worker_group is None


def test_reach_levels_match_a_plain_scan():
    """The 64-bit word scan of uint8 rows finds each row's last nonzero column like a plain scan,
    never below ``least``."""
    rng = np.random.default_rng(4)
    rows = _rows(300, 720, rng)
    rows[5] = 0
    rows[6, 719] = 1
    plain = np.where(rows != 0, np.arange(1, 721), 0).max(axis=1)
    step = staircase.STEP
    np.testing.assert_array_equal(staircase.reach_levels(rows, 0, 720), -(-plain // step))
    np.testing.assert_array_equal(staircase.reach_levels(rows.astype(np.float32), 0, 720), -(-plain // step))
    np.testing.assert_array_equal(staircase.reach_levels(rows, 100, 720), -(-np.maximum(plain, 100) // step))


def test_plan_puts_the_thread_boundary_on_a_group_boundary_of_whole_kernel_blocks():
    rng = np.random.default_rng(5)
    levels = staircase.reach_levels(_rows(5000, 700, rng), 0, 700)
    p = staircase.plan(levels, 500, 700, rng)
    cut = p.bounds[p.worker_group]
    assert cut % staircase.THREAD_ROWS == 0 and staircase.MIN_ROWS <= cut <= 500 - staircase.MIN_ROWS
    assert list(p.bounds) == sorted(set(p.bounds)) and p.bounds[0] == 0 and p.bounds[-1] == 500
    assert 0 < p.column_cut < 700
