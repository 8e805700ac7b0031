"""What the loss step of each chunk leaves for the epoch's numbers, counted once per epoch.

Small NumPy calls cost several times their warm time right after a chunk's large products (which
fill the caches), so whatever the next step does not need is kept in epoch-long arrays and
counted after the epoch, where those calls run warm and over long rows.
"""

from __future__ import annotations

import numpy as np


class Tally:
    """Per image (indexed by position in the epoch's order): its logits (one row per class, so
    that the epoch's maxima are a few passes over long rows, where an argmax per chunk loops over
    rows of a few classes), its true class and, for softmax outputs, its true class's shifted logit
    and its sum of exps. Per chunk: its summed loss, or the one shift its logits took, when that
    shift left every logit within range (the loss is then finite, and computed here); sigmoid
    outputs also keep one summed error per chunk."""

    def __init__(self, n: int, n_out: int, dtype: np.dtype) -> None:
        self.logits = np.empty((n_out, n), dtype)
        self.labels = np.empty(n, np.intp)
        self.label_flat = np.empty(n, np.intp)  # where each true class's logit is in the flat logits
        self.positions = np.arange(n)
        self.label_logit = np.empty(n, dtype)
        self.exp_sum = np.empty(n, dtype)
        self.scratch = np.empty(n, dtype)  # the epoch's counting, without fresh arrays
        self.chunks: list[tuple[int, int]] = []  # (start, stop) of each chunk seen this epoch
        self.losses: list[float | None] = []  # each chunk's summed loss (None: not computed yet)
        self.shifts: list[float | None] = []  # the shift of each chunk whose loss is computed here
        self.errors: list[float] = []  # sigmoid outputs: each chunk's summed |p - onehot|

    def start_epoch(self) -> None:
        """Once ``labels`` holds the epoch's true classes."""
        np.multiply(self.labels, self.logits.shape[1], out=self.label_flat)
        self.label_flat += self.positions

    def add_chunk(self, start: int, stop: int, loss: float | None, shift: float | None = None) -> None:
        """A chunk's loss step is done: ``loss`` is its summed loss, or None when its logits (in
        ``logits``) all took the one ``shift`` and ``exp_sum`` holds its rows' sums of exps."""
        self.chunks.append((start, stop))
        self.losses.append(loss)
        self.shifts.append(shift)

    def take(self, softmax: bool) -> tuple[int, float, list[float]]:
        """The number of correct predictions, the summed |p - onehot| and each chunk's summed loss,
        for the chunks seen since the last call; every chunk's numbers summed as the chunk would
        have summed them."""
        stop = self.chunks[-1][1] if self.chunks else 0
        start = self.chunks[0][0] if self.chunks else 0
        scratch = self.scratch[: stop - start]
        label_logits = np.take(self.logits, self.label_flat[start:stop], out=scratch)
        correct = self.correct(start, stop, label_logits)
        by_length = self._by_length()
        losses = self._losses(start, stop, label_logits, by_length)
        errors = self.errors
        if softmax:
            # |p - onehot| sums to 2 (1 - p_label) per row, since p sums to 1
            p_label = np.exp(self.label_logit[start:stop], out=scratch)
            np.divide(p_label, self.exp_sum[start:stop], out=p_label)
            sums = self._chunk_sums(p_label, start, by_length)
            errors = [2.0 * (b - a - float(p)) for (a, b), p in zip(self.chunks, sums)]
        abs_err = 0.0  # added in turn, as the chunks were: sum() compensates from Python 3.12 on
        for err in errors:
            abs_err += err
        self.chunks, self.losses, self.shifts, self.errors = [], [], [], []
        return correct, abs_err, losses

    def _losses(
        self, start: int, stop: int, label_logits: np.ndarray, by_length: dict[int, list[int]]
    ) -> list[float]:
        """Each chunk's summed loss, the ones left by the loss step computed as it would have: the
        true class's logit (``label_logits``, which this overwrites) shifted, then
        sum(log(sum of exps)) - sum(shifted logits)."""
        left = [shift is not None for shift in self.shifts]
        if not any(left):
            return list(self.losses)
        lengths = [b - a for a, b in self.chunks]
        shifts = np.array([shift or 0.0 for shift in self.shifts], self.label_logit.dtype)
        label_logit = self.label_logit[start:stop]
        # the other chunks' rows, shifted by each row's own maximum, are in label_logit already
        shifted = label_logit if all(left) else label_logits
        if len(set(lengths)) == 1:
            rows = (-1, lengths[0])
            np.subtract(label_logits.reshape(rows), shifts[:, None], out=shifted.reshape(rows))
        else:
            np.subtract(label_logits, np.repeat(shifts, lengths), out=shifted)
        if not all(left):
            np.copyto(label_logit, shifted, where=np.repeat(left, lengths))
        log_sums = self._chunk_sums(np.log(self.exp_sum[start:stop], out=label_logits), start, by_length)
        shifted_sums = self._chunk_sums(label_logit, start, by_length)
        return [
            float(log_sum - shifted_sum) if loss is None else loss
            for loss, log_sum, shifted_sum in zip(self.losses, log_sums, shifted_sums)
        ]

    def _by_length(self) -> dict[int, list[int]]:
        """The chunks seen (their indices), by length."""
        by_length: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(self.chunks):
            by_length.setdefault(b - a, []).append(i)
        return by_length

    def _chunk_sums(self, values: np.ndarray, start: int, by_length: dict[int, list[int]]) -> list:
        """values[a - start : b - start].sum() of every chunk (a, b), each summed alone as NumPy
        sums a row (pairwise), though in a few calls: the chunks of one length (``by_length``) as
        rows of a matrix."""
        sums = [None] * len(self.chunks)
        for length, chunks in by_length.items():
            starts = np.array([self.chunks[i][0] - start for i in chunks])
            if len(chunks) * length == len(values) and starts[-1] == len(values) - length:
                rows = values.reshape(-1, length)  # every chunk, end to end
            else:
                rows = values[starts[:, None] + np.arange(length)]
            for i, total in zip(chunks, rows.sum(axis=1)):
                sums[i] = total
        return sums

    def correct(self, start: int, stop: int, label_logits: np.ndarray | None = None) -> int:
        """How many images in ``start:stop`` have their true class as the argmax of their logits;
        ``label_logits``: their true classes' logits, where the caller has taken them already."""
        if label_logits is None:
            label_logits = np.take(self.logits, self.label_flat[start:stop])
        return count_correct(self.logits[:, start:stop], self.labels[start:stop], label_logits)


def count_correct(logits: np.ndarray, labels: np.ndarray, label_logits: np.ndarray) -> int:
    """How many columns of ``logits`` (classes, images) have their true class ``labels`` as the
    argmax (the first class of the highest logit, as np.argmax picks it); ``label_logits``: each
    column's logit of its true class. A few passes over long rows, where an argmax loops over
    columns of a few classes; np.argmax decides only the columns with no single top logit."""
    top = np.maximum.reduce(logits, axis=0)
    hits = int(np.count_nonzero(label_logits == top))
    # every column has exactly one logit at its top (none where the top is NaN): a hit is the argmax
    if np.count_nonzero(logits == top) == len(top) and not np.isnan(top).any():
        return hits
    unsure = np.flatnonzero(np.count_nonzero(logits == top, axis=0) != 1)  # tied tops, or NaN
    hits -= int(np.count_nonzero(label_logits[unsure] == top[unsure]))
    return hits + int(np.count_nonzero(logits[:, unsure].argmax(axis=0) == labels[unsure]))
