"""The first layer's staircase: each image's row multiplies only the input columns up to its last ink.

The active input columns are ordered so that the images' ink ends early, roughly most often inked
first (``layout``). An image's *reach* k is one more than the position of its last inked column in
that order: its inputs beyond k are zeros, which add nothing to any sum. Within a chunk the images are put in
descending reach (one stable sort per epoch, ``Staircase.arrange``) and cut into groups of rows;
group g multiplies only the first K_g columns, K_g its first row's reach rounded up to ``STEP``:

* forward: one product per group, ``x[a:b, :K_g] @ W1[:K_g] -> z[a:b]``;
* weight gradient: one product per *column block*, ``x[:b_g, K_(g+1):K_g].T @ delta[:b_g] ->
  dW1[K_(g+1):K_g]``: only the rows of groups 0..g have ink in that block, a leading row block.

The sums are those of the dense product without its exact zeros, in another order. Where the rows
are cut into groups is planned once per fit (``plan``, a dynamic programme on sample chunks that
weighs the columns a group saves against the cost of one more product); each epoch takes every
chunk's K_g at once from the arranged reaches.

Threads: the list of products contains the boundaries at which two threads divide it (a group
boundary for the forward pass, a fixed column for the gradient), and one thread runs exactly the
same list in turn. 1 and 2 threads therefore run the same products on the same buffers: bit-identical
by construction, whichever the thread choice picks (docs/performance.md, "The staircase").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A group's columns are rounded up to a multiple of this (BLAS kernels work on column blocks of
# 16), and the epoch's sort orders images by their reach in these steps, so that a 16-bit key holds it.
STEP = 16
# What one more product costs, in rows x columns of the dense product (its call, its edge blocks);
# fitted to per-chunk timings on MNIST (docs/performance.md).
GROUP_OVERHEAD = 6000
# Group boundaries are planned on multiples of this many rows.
ROW_STEP = 8
# Candidate group starts per chunk at most (the plan's search is quadratic in them).
PLAN_POINTS = 64
# Random chunks the plan is fitted on (seeded: the plan, hence the arithmetic, is the same every fit).
PLAN_CHUNKS = 64
# Rows per thread at least: below that a share of the products is too small to be worth a thread.
MIN_ROWS = 96
# The thread boundary lies on a multiple of this many rows: the row blocks of OpenBLAS's AVX-512
# (16) and AVX2 (24) float32 kernels, so that the deeper layers' products, which the two threads
# cut there (see Backprop), keep their bits.
THREAD_ROWS = 48
# With several threads, the calling thread's share of the first layer's work. Forward, each thread
# then takes its rows through the deeper layers; backward, the calling thread also multiplies the
# deeper layers' gradients and a worker updates more of the first layer's rows.
FORWARD_SHARE = 0.5
BACKWARD_SHARE = 0.5
# How far from FORWARD_SHARE the thread boundary may lie, to fall where the groups are cut anyway.
SHARE_SLACK = 0.1


def reach_levels(rows: np.ndarray, least: int, width: int) -> np.ndarray:
    """Each row's reach (one more than the position of its last nonzero; at least ``least``) in
    units of ``STEP``, rounded up, as 16-bit integers. Rows of uint8 with a width that is a
    multiple of 8 are scanned as 64-bit words, eight times fewer elements."""
    n, cols = rows.shape
    if rows.dtype == np.uint8 and cols % 8 == 0 and rows.strides[1] == 1 and rows.strides[0] % 8 == 0:
        words = rows.view(np.uint64)
        inked = words != 0
        last_word = words.shape[1] - 1 - inked[:, ::-1].argmax(axis=1)
        last_bytes = rows.reshape(n, -1, 8)[np.arange(n), last_word]  # (n, 8)
        reach = last_word * 8 + 8 - (last_bytes[:, ::-1] != 0).argmax(axis=1)
        reach[~inked.any(axis=1)] = 0
    else:
        inked = rows != 0
        reach = cols - inked[:, ::-1].argmax(axis=1)
        reach[~inked.any(axis=1)] = 0
    np.maximum(reach, least, out=reach)
    np.minimum(reach, width, out=reach)
    return ((reach + STEP - 1) // STEP).astype(np.uint16)


def columns_of(levels: np.ndarray | int, width: int) -> np.ndarray:
    """The columns a row (or rows) of these reach levels multiplies: whole steps, at most ``width``."""
    return np.minimum(np.asarray(levels, np.int64) * STEP, width)


@dataclass(frozen=True)
class Plan:
    """How chunks of one length are cut: group row ``bounds`` (0, ..., length), ``worker_group``
    (the first group a second thread takes; None: too short to share), ``column_cut`` (the
    gradient's first column a second thread takes) and the expected ``cost`` (rows x columns)."""

    bounds: tuple[int, ...]
    worker_group: int | None
    column_cut: int
    cost: float


def plan(levels: np.ndarray, length: int, width: int, rng: np.random.Generator) -> Plan:
    """The plan for chunks of ``length`` images, fitted on random chunks of ``levels``."""
    sample = np.sort(rng.choice(levels, (PLAN_CHUNKS, length)), axis=1)[:, ::-1]
    # (chunks, rows): a group's K if it starts there
    columns = columns_of(sample, width)
    mean_columns = columns.mean(axis=0)
    # The thread boundary: a whole number of kernel blocks where the rows' own columns reach about
    # the caller's share, the one that costs the fewest extra columns (it may fall where the
    # groups would be cut anyway).
    total = mean_columns.sum()
    share = np.cumsum(mean_columns) / total if total else np.zeros(length)  # no ink: nothing to share
    cuts = range(-(-MIN_ROWS // THREAD_ROWS) * THREAD_ROWS, length - MIN_ROWS + 1, THREAD_ROWS)
    near = [c for c in cuts if abs(share[c - 1] - FORWARD_SHARE) <= SHARE_SLACK]
    near = near or sorted(cuts, key=lambda c: abs(share[c - 1] - FORWARD_SHARE))[:1]
    shared = bool(near)
    if shared:
        options = []
        for c in near:
            (cost_mine, mine), (cost_theirs, theirs) = (
                _cheapest_groups(mean_columns, 0, c),
                _cheapest_groups(mean_columns, c, length),
            )
            options.append((cost_mine + cost_theirs, (*mine, *theirs), c))
        _, bounds, cut = min(options)
    else:
        bounds = _cheapest_groups(mean_columns, 0, length)[1]
    bounds = (*bounds, length)
    starts = np.array(bounds[:-1])
    sizes = np.diff(bounds)
    group_columns = columns[:, starts]  # (chunks, groups)
    cost = float((group_columns * sizes).sum(axis=1).mean() + GROUP_OVERHEAD * len(sizes))
    worker_group = bounds.index(cut) if shared else None
    # the gradient's column cut: rows reading column j are those of the groups whose K exceeds j
    reading = np.zeros(width + 1)
    for g, rows in enumerate(np.cumsum(sizes)):
        below = group_columns[:, g + 1] if g + 1 < len(sizes) else np.zeros(PLAN_CHUNKS, np.int64)
        np.add.at(reading, below, rows / PLAN_CHUNKS)
        np.add.at(reading, group_columns[:, g], -rows / PLAN_CHUNKS)
    spent = np.cumsum(np.cumsum(reading)[:width])
    column_cut = width
    if shared and spent[-1] > 0:
        column_cut = int(np.searchsorted(spent, BACKWARD_SHARE * spent[-1]))
        column_cut = min(width, max(STEP, round(column_cut / STEP) * STEP))
    return Plan(bounds, worker_group, column_cut, cost)


def _cheapest_groups(mean_columns: np.ndarray, lo: int, hi: int) -> tuple[float, tuple[int, ...]]:
    """The expected cost and group starts in rows ``lo:hi`` that minimise the expected rows x columns plus
    ``GROUP_OVERHEAD`` per group (rows sorted by descending reach: a group's K is its first row's).
    At most about ``PLAN_POINTS`` candidate starts, so that long chunks plan as fast as short ones."""
    step = max(ROW_STEP, -(-(hi - lo) // PLAN_POINTS // ROW_STEP) * ROW_STEP)
    cand = [*range(lo, hi, step), hi]
    best: dict[int, tuple[float, tuple[int, ...]]] = {hi: (0.0, ())}
    for a in reversed(cand[:-1]):
        best[a] = min(
            ((b - a) * mean_columns[a] + GROUP_OVERHEAD + best[b][0], (a, *best[b][1])) for b in cand if b > a
        )
    return best[lo]


class Steps:
    """One chunk's first-layer products: its group ``bounds`` and ``columns`` (K per group)."""

    __slots__ = ("bounds", "columns", "plan")

    def __init__(self, bounds: tuple[int, ...], columns: list[int], plan: Plan) -> None:
        self.bounds, self.columns, self.plan = bounds, columns, plan

    @property
    def worker_row(self) -> int | None:
        """The first row a second thread gathers and multiplies (None: the chunk is not shared)."""
        group = self.plan.worker_group
        return None if group is None else self.bounds[group]

    def forward(self, first: int = 0, stop: int | None = None) -> list[tuple[int, int, int]]:
        """(row start, row stop, columns) of the groups ``first:stop``."""
        bounds, columns = self.bounds, self.columns
        groups = range(first, len(columns) if stop is None else stop)
        return [(bounds[g], bounds[g + 1], columns[g]) for g in groups]

    def gradient(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(first column, end column, rows) of the weight gradient's column blocks, before and after
        the plan's column cut (the calling thread's and a second thread's)."""
        cut, bounds, columns = self.plan.column_cut, self.bounds, self.columns
        mine, theirs = [], []
        lo = 0
        for g in range(len(columns) - 1, -1, -1):
            hi, rows = columns[g], bounds[g + 1]
            if hi > lo:
                if hi <= cut:
                    mine.append((lo, hi, rows))
                elif lo >= cut:
                    theirs.append((lo, hi, rows))
                else:
                    mine.append((lo, cut, rows))
                    theirs.append((cut, hi, rows))
                lo = hi
        return mine, theirs


class Staircase:
    """The plans of a fit's chunks (which begin at ``starts`` in every epoch's order of ``n``
    images) and the per-epoch arrangement."""

    def __init__(self, levels: np.ndarray, width: int, starts: np.ndarray, n: int) -> None:
        self.levels, self.width = levels, width
        lengths = np.diff(np.append(starts, n)).tolist()
        rng = np.random.default_rng(0)
        self.plans = {length: plan(levels, length, width, rng) for length in sorted(set(lengths))}
        self.chunk_plans = [self.plans[length] for length in lengths]
        # every group's first position in the epoch's order, chunk after chunk
        self.group_at = np.concatenate(
            [start + np.array(p.bounds[:-1]) for start, p in zip(starts.tolist(), self.chunk_plans)]
        )
        top = int(levels.max(initial=0))
        self.descending = (top - levels).astype(levels.dtype)  # sorts ascending as reach sorts descending
        # per position: the chunk's base key, so that one stable sort orders every chunk at once
        chunk_of = np.repeat(np.arange(len(starts)), lengths)
        fits = len(starts) * (top + 1) <= np.iinfo(np.uint16).max
        # NumPy radix-sorts 16-bit keys
        self.keys = (chunk_of * (top + 1)).astype(np.uint16 if fits else np.int64)
        self.sorted_keys = np.empty_like(self.keys)

    def arrange(self, order: np.ndarray) -> tuple[np.ndarray, list[Steps]]:
        """The epoch's ``order`` with each chunk's images in descending reach (in order among equals),
        and every chunk's products."""
        np.add(self.keys, np.take(self.descending, order), out=self.sorted_keys, casting="unsafe")
        arranged = np.take(order, np.argsort(self.sorted_keys, kind="stable"))
        levels = np.take(self.levels, np.take(arranged, self.group_at))
        columns = columns_of(levels, self.width).tolist()
        steps, at = [], 0
        for p in self.chunk_plans:
            groups = len(p.bounds) - 1
            steps.append(Steps(p.bounds, columns[at : at + groups], p))
            at += groups
        return arranged, steps

    def summary(self, length: int) -> tuple[int, float]:
        """Groups per chunk of ``length`` images and their expected columns per image."""
        p = self.plans[length]
        groups = len(p.bounds) - 1
        return groups, (p.cost - GROUP_OVERHEAD * groups) / length
