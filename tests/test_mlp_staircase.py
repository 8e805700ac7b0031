"""The first layer's staircase (mlp/staircase.py): its products give the dense products' values."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab.mlp import layout, staircase


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


def _reaches(inked, order):
    """Each image's reach (one more than its last inked position) with the columns in ``order``."""
    placed = inked[:, order]
    return np.where(placed.any(axis=1), placed.shape[1] - placed[:, ::-1].argmax(axis=1), 0)


def _fewest_reached_by_recounting(inked):
    """The backward elimination written plainly: every place recounts the unsettled images."""
    unsettled, free, back = np.ones(len(inked), bool), list(range(inked.shape[1])), []
    while free:
        counts = [int((inked[:, c] & unsettled).sum()) for c in free]
        # among equal counts the column preferred last (the highest index) takes the later place
        column = max((c for c, count in zip(free, counts) if count == min(counts)))
        back.append(column)
        free.remove(column)
        unsettled &= ~inked[:, column]
    return np.array(back[::-1])


def test_fewest_reached_matches_the_plain_backward_elimination():
    rng = np.random.default_rng(5)
    for n, cols, density in [(40, 9, 0.2), (300, 30, 0.05), (200, 25, 0.3), (5, 12, 0.1)]:
        inked = rng.random((n, cols)) < density * rng.random(cols)  # columns inked unequally often
        order = layout.fewest_reached(inked)
        assert sorted(order) == list(range(cols))
        np.testing.assert_array_equal(order, _fewest_reached_by_recounting(inked))


def test_fewest_reached_beats_ordering_by_frequency():
    """Column 2 is inked more often than column 1, but three of its five images are also inked in
    column 3, which takes the last place either way: of the columns left, column 2 then has fewer
    unsettled images than column 1 and takes the later place, where frequency puts column 1."""
    inked = np.zeros((19, 4), bool)
    inked[0:3, 2] = inked[0:3, 3] = True  # columns 2 and 3
    inked[3:5, 2] = True
    inked[5:9, 1] = True
    inked[9:19, 0] = True
    by_frequency = np.argsort(-inked.sum(axis=0), kind="stable")
    np.testing.assert_array_equal(by_frequency, [0, 2, 1, 3])
    order = layout.fewest_reached(inked)
    np.testing.assert_array_equal(order, [0, 1, 2, 3])
    assert _reaches(inked, by_frequency).sum() == 3 * 4 + 2 * 2 + 4 * 3 + 10 * 1
    assert _reaches(inked, order).sum() == 3 * 4 + 2 * 3 + 4 * 2 + 10 * 1
