"""Mini-batch training of the NumPy MLP: the epoch loop, written for speed.

The rooms it uses: ``layout`` (the input columns' order, the working parameter copy,
the unit-scaling fold), ``backprop`` (forward and backward over one chunk), ``tally`` (the
epoch's training loss, accuracy and error, from what each chunk left), ``optimizers`` (the update
rules), ``penalty`` (L1/L2), ``schedules`` (the learning rate per epoch), ``evaluate`` (the
per-epoch accuracy of other sets) and ``profile`` (``--profile``'s timers). ``reference`` is the same training
in textbook NumPy: read it first; tests show the two agree. docs/performance.md says what each
speed measure buys.

Every buffer is allocated once per fit and nothing large is allocated per batch or per epoch:
freshly touched memory is expensive on small virtual machines. Large batches are processed in
chunks of ``CHUNK`` rows whose gradients are summed: the same arithmetic in cache-sized buffers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError, TrainingDiverged
from .backprop import Backprop
from .evaluate import SplitEval
from .inputs import EvalSet, check_data
from .layout import TrainData, WorkingLayout, describe_layout
from .model import MLP
from .optimizers import Optimizer, make_optimizer
from .penalty import penalty_loss
from .profile import PHASES, Phases
from .schedules import learning_rate
from .staircase import Staircase, Steps
from .threads import ThreadChoice, product_threads

__all__ = ["CHUNK", "EVAL_BLOCK", "PHASES", "Trainer", "describe_layout", "learning_rate", "train"]

# Rows per chunk of a batch; batches up to this size are one chunk. Big enough for efficient
# products, small enough for a chunk's buffers to stay in cache (picked by timing, see docs).
CHUNK = 500

# Images per block of the per-epoch evaluation: a block's float inputs, all 784 columns, stay within
# a core's L2 cache (docs/performance.md); a multiple of the BLAS kernels' row blocks (16 and 24).
EVAL_BLOCK = 384


class FitState:
    """What one fit allocates: the data as the loop reads it, the working layout, the optimizer
    (which owns the working parameters) and the chunk pass, plus a scratch parameter buffer."""

    def __init__(self, model: MLP, data: TrainData, batch: int, chunk: int) -> None:
        self.data = data
        self.working = WorkingLayout(model, data)
        self.optimizer: Optimizer = make_optimizer(model.config, self.working)
        self.chunk_rows = min(batch, chunk)
        # where each chunk begins in an epoch's order: batches of ``batch``, each cut into chunks
        n, rows = data.n, self.chunk_rows
        self.starts = np.concatenate([np.arange(b, min(b + batch, n), rows) for b in range(0, n, batch)])
        self.chunk_stop = dict(zip(self.starts.tolist(), [*self.starts[1:].tolist(), n]))
        self.chunk_index = {start: i for i, start in enumerate(self.starts.tolist())}
        self.staircase = Staircase(data.levels, data.width, self.starts, n)
        self.backprop = Backprop(
            model, self.working, data, self.chunk_rows, summed=self.chunk_rows < batch, starts=self.starts
        )
        self.scratch = np.empty(self.working.size, model.dtype)
        self.order = np.arange(data.n)  # the epoch's order, arranged (see Staircase.arrange)
        self.steps: list[Steps] = []  # per chunk: its first-layer products

    def start_epoch(self, order: np.ndarray) -> None:
        """Arrange the epoch's ``order`` chunk by chunk and take its labels."""
        self.order, self.steps = self.staircase.arrange(order)
        self.backprop.start_epoch(self.data, self.order)

    def chunk_pass(
        self,
        at: int,
        stop: int,
        first: bool,
        scale: float,
        phases: Phases,
        update: Callable[[int, int], None] | None = None,
    ) -> float:
        """Forward and backward of the chunk ``at:stop`` of the epoch's order; returns its check
        value (its summed data loss where that may be inf or NaN, else 0.0; ``epoch_counts`` gives
        every chunk's loss). The next chunk's rows may be gathered meanwhile (on two threads).
        ``update``: the optimizer's ``range_step``, for a batch of one chunk (see Backprop.run)."""
        opt, order, index = self.optimizer, self.order, self.chunk_index[at]
        following = None
        if stop < self.data.n and self.backprop.products is not None:  # gathered ahead by a worker
            following = (stop, order[stop : self.chunk_stop[stop]], self.steps[index + 1])
        steps = self.steps[index]
        idx = order[at:stop]
        return self.backprop.run(
            self.data, idx, steps, at, opt.params, opt.grad, first, scale, phases, following, update
        )

    def layout(self) -> dict[str, float]:
        """How the first layer's products cover the input columns (``Trainer.layout``)."""
        summary = self.data.summary()
        summary["groups"], summary["columns_per_image"] = self.staircase.summary(self.chunk_rows)
        return summary

    def epoch_counts(self) -> tuple[int, float, list[float]]:
        """Correct predictions, summed |p - onehot| and each chunk's summed data loss, of the
        chunks passed since the last call."""
        return self.backprop.tally.take(self.backprop.config.output == "softmax")

    def penalty(self) -> float:
        return penalty_loss(self.optimizer.config, self.working, self.optimizer.params.flat, self.scratch)

    def write_model(self) -> None:
        self.working.write_model(self.optimizer.params.flat, self.scratch)


class Trainer:
    """Trains one model; ``fit`` may be called again (each fit allocates its own buffers).

    During a fit the parameters live in the optimizer's working copy (see layout); the model's own
    are brought up to date at the end of every epoch (before callbacks, evaluation and early
    stopping look at them) and when training stops for any reason. ``split``: which input columns
    every image multiplies whatever its ink ("auto", a fraction, or None for no staircase: see
    layout.TrainData).
    """

    def __init__(
        self,
        model: MLP,
        *,
        chunk: int = CHUNK,
        split: float | str | None = "auto",
        adapt_threads: bool = True,
    ) -> None:
        self.model = model
        self.config = model.config
        self.chunk = int(chunk)
        if not (split is None or split == "auto" or (isinstance(split, (int, float)) and 0 < split <= 1)):
            raise ConfigError(f"split must be 'auto', None or a fraction in (0, 1], got {split!r}")
        self.split = split
        self.threads: int | None = None
        # with a limit above one thread, time one against all and keep the faster (see ThreadChoice)
        self.adapt_threads = adapt_threads
        self.thread_choice: ThreadChoice | None = None
        self.stopped_early = False
        self.best_epoch: int | None = None
        # How the last fit split the input columns (see layout): for benchmarks and curiosity.
        self.layout: dict[str, float] = {}
        self.fit_state: FitState | None = None  # the last fit's buffers

    @property
    def input_scale(self) -> float:
        """The last fit's unit-scaling fold (1: none; see layout)."""
        return 1.0 if self.fit_state is None else self.fit_state.working.input_scale

    def prepare(self, inputs: np.ndarray, labels: np.ndarray, batch: int | None) -> FitState:
        """Lay out the training data and allocate the buffers for batches of ``batch`` (None: all)."""
        data = TrainData(self.model, inputs, labels, self.split)
        self.fit_state = FitState(self.model, data, min(batch or data.n, data.n), self.chunk)
        self.layout = self.fit_state.layout()
        return self.fit_state

    def loss_and_gradients(
        self, inputs: np.ndarray, labels: np.ndarray
    ) -> tuple[float, float, dict[str, np.ndarray]]:
        """Mean data loss, penalty and the gradients of their sum, for one batch.

        The same code path as training (chunks and column trimming included), without an
        update: for checks against autograd and finite differences. Gradients are keyed like
        ``get_params()``.
        """
        fit = self.prepare(inputs, labels, None)
        n = fit.data.n
        loss = 0.0
        phases = Phases(False)
        fit.start_epoch(np.arange(n))
        for start in range(0, n, fit.chunk_rows):
            fit.chunk_pass(start, min(start + fit.chunk_rows, n), start == 0, 1.0 / n, phases)
        for chunk_loss in fit.epoch_counts()[2]:
            loss += chunk_loss
        penalty = fit.penalty()
        cfg, working, opt = self.config, fit.working, fit.optimizer
        nw = working.n_weights
        grad = working.in_model_units(opt.grad.flat, fit.scratch).copy()
        params = working.in_model_units(opt.params.flat, fit.scratch)
        if cfg.l2:
            grad[:nw] += cfg.l2 * params[:nw]
        if cfg.l1:
            grad[:nw] += cfg.l1 * np.sign(params[:nw])
        gw, gb = self.model._views(working.to_model_order(grad))
        out = {}
        for i, (w, b) in enumerate(zip(gw, gb), start=1):
            out[f"W{i}"], out[f"b{i}"] = w, b
        return loss / n, penalty, out

    def fit(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        *,
        test: tuple[np.ndarray, np.ndarray] | None = None,
        val: tuple[np.ndarray, np.ndarray] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        profile: bool = False,
        threads: int | str | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs; returns one dict per epoch (nothing is printed).

        ``threads``: how many threads the fit's products use: an int, "auto" (every core, see
        mnistlab.mlp.threads) or None (the BLAS default). Above one, BLAS runs on one thread and
        the trainer spreads the work over its own (mnistlab.mlp.threads.RowSplit, bit-identical to
        one thread), falling back to one thread where that proves faster (``adapt_threads``, see
        ThreadChoice; ``thread_choice.log`` says what it measured).

        ``inputs`` are preprocessed (N, 28, 28) or (N, input_size) arrays, or raw uint8 images
        (N, 28, 28) that the model's ``preprocess`` is applied to (less memory, faster); the same
        for ``test`` and ``val``. ``train_accuracy``, ``loss`` (penalty included; ``reg_loss`` is
        the penalty alone) and ``mean_abs_error`` are averaged over the batches as they were
        trained (the weights move during the epoch, as in Keras' logs); ``test_accuracy`` and
        ``val_accuracy`` are measured after the epoch. With ``config.patience`` and a validation
        set, training stops early and the weights of the best validation epoch are restored.
        Raises TrainingDiverged on a NaN/inf loss, after restoring the last good (epoch-start)
        weights.
        """
        cfg = self.config
        if cfg.patience is not None and val is None:
            raise ConfigError("early stopping (patience) needs a validation set")
        test_set = check_data(self.model, *test, "test data", keep_raw=True) if test is not None else None
        val_set = check_data(self.model, *val, "validation data", keep_raw=True) if val is not None else None
        fit = self.prepare(inputs, labels, cfg.batch_size)
        # Overflow only happens on the way to a NaN/inf loss, which is caught and reported.
        with (
            np.errstate(over="ignore", invalid="ignore", divide="ignore"),
            product_threads(threads) as (used, split),
        ):
            self.threads = used
            adapt = split is not None and self.adapt_threads
            chooser = ThreadChoice(split, min(cfg.batch_size, fit.data.n)) if adapt else None
            self.thread_choice = chooser
            fit.backprop.products = split
            try:
                return self._epochs(fit, test_set, val_set, callback, Phases(profile), chooser)
            finally:
                fit.backprop.products = None
                fit.write_model()

    def _evaluator(
        self, fit: FitState, evalset: EvalSet | None, layout_key: str | None
    ) -> Callable[[], float] | None:
        """The accuracy on ``evalset`` after an epoch (after the model is written); ``layout_key``:
        where ``layout`` records its mean columns multiplied per image."""
        if evalset is None:
            return None
        split = SplitEval.make(evalset, fit.data, fit.working, EVAL_BLOCK)
        if split is not None:
            if layout_key:
                self.layout[layout_key] = sum((b - a) * k for a, b, k in split.blocks) / len(split.labels)
            # on the trainer's threads, as long as the thread choice keeps them
            return lambda: split.accuracy(self.model, fit.optimizer.params, fit.backprop.products)
        if evalset.raw:
            evalset.inputs, evalset.raw = evalset.preprocessed(self.model), False  # for model.accuracy
        return lambda: self.model.accuracy(evalset.inputs, evalset.labels)

    def _epochs(
        self,
        fit: FitState,
        test_set: EvalSet | None,
        val_set: EvalSet | None,
        callback: Callable[[dict[str, Any]], None] | None,
        phases: Phases,
        chooser: ThreadChoice | None,
    ) -> list[dict[str, Any]]:
        cfg, opt = self.config, fit.optimizer
        n = fit.data.n
        batch = min(cfg.batch_size, n)
        rng = np.random.default_rng(cfg.seed)
        history: list[dict[str, Any]] = []
        test_accuracy = self._evaluator(fit, test_set, "test_columns_per_image")
        val_accuracy = self._evaluator(fit, val_set, None)
        good = opt.params.flat.copy()  # the weights at the start of the epoch, kept for divergence
        best_acc, best_params, waited = -1.0, None, 0
        n_out = self.model.config.n_classes
        regularized = bool(cfg.l1 or cfg.l2)
        ranges = fit.backprop.products is not None
        # the penalty of the weights the next batch uses, computed right after the step that made
        # them, while they are still in cache
        penalty = fit.penalty() if regularized else 0.0
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, epoch)
            opt.start_epoch(lr)
            grad_scale = opt.gradient_scale(lr)
            np.copyto(good, opt.params.flat)
            if chooser is not None:
                chooser.start_epoch(epoch)
            fit.start_epoch(rng.permutation(n))
            penalty_sum = 0.0
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                size = stop - start
                check = 0.0  # inf or NaN where the batch's loss is (see chunk_pass)
                started = time.perf_counter()
                phases.start()
                # a batch of one chunk on several threads: each updates what it computed the gradient of
                update = opt.range_step(lr) if ranges and size <= fit.chunk_rows else None
                for cs in range(start, stop, fit.chunk_rows):
                    check += fit.chunk_pass(
                        cs, min(cs + fit.chunk_rows, stop), cs == start, grad_scale / size, phases, update
                    )
                if not math.isfinite(check + penalty):
                    np.copyto(opt.params.flat, good)
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1} (loss is {check / size + penalty}); "
                        "kept the weights from the start of that epoch: lower the learning rate "
                        f"(now {lr:g})"
                    )
                penalty_sum += penalty * size
                phases.lap("loss")
                if fit.backprop.updated:
                    opt.end_range_step()
                else:
                    opt.step(lr)
                if regularized:
                    penalty = fit.penalty()
                phases.lap("update")
                if chooser is not None:
                    chooser.batch_done(time.perf_counter() - started)
            correct, err_sum, chunk_losses = fit.epoch_counts()
            loss_sum = _batch_sums(chunk_losses, fit.chunk_rows, batch)
            if not np.isfinite(opt.params.flat).all():
                np.copyto(opt.params.flat, good)
                raise TrainingDiverged(
                    f"weights became NaN/inf in epoch {epoch + 1}; kept the weights from the start of "
                    f"that epoch: lower the learning rate (now {lr:g})"
                )
            fit.write_model()
            train_seconds = time.perf_counter() - t0
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": (loss_sum + penalty_sum) / n,
                "reg_loss": penalty_sum / n,
                "train_accuracy": correct / n,
                "mean_abs_error": err_sum / (n * n_out),
                "lr": lr,
            }
            if test_accuracy is not None:
                row["test_accuracy"] = test_accuracy()
            if val_accuracy is not None:
                row["val_accuracy"] = val_accuracy()
            row["seconds"] = time.perf_counter() - t0
            row["train_seconds"] = train_seconds
            if phases.enabled:
                row.update(phases.take())
            history.append(row)
            if callback is not None:
                callback(row)
            if val_set is not None:
                if row["val_accuracy"] > best_acc:
                    best_acc, waited, self.best_epoch = row["val_accuracy"], 0, epoch + 1
                    if cfg.patience is not None:
                        best_params = opt.params.flat.copy()
                else:
                    waited += 1
                    if cfg.patience is not None and waited >= cfg.patience:
                        self.stopped_early = True
                        break
        if best_params is not None:
            np.copyto(opt.params.flat, best_params)
        return history


def _batch_sums(chunk_losses: list[float], chunk_rows: int, batch: int) -> float:
    """The epoch's summed loss from its chunks' (``chunk_rows`` each, the last of a batch maybe
    fewer), added up as the loop always did: the chunks of each batch in turn, then the batches."""
    total, per_batch = 0.0, -(-batch // chunk_rows)
    for first in range(0, len(chunk_losses), per_batch):
        batch_loss = 0.0
        for loss in chunk_losses[first : first + per_batch]:
            batch_loss += loss
        total += batch_loss
    return total


def train(
    model: MLP,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    profile: bool = False,
    chunk: int = CHUNK,
    split: float | str | None = "auto",
    threads: int | str | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; returns the per-epoch history (see Trainer.fit)."""
    return Trainer(model, chunk=chunk, split=split).fit(
        inputs, labels, test=test, val=val, callback=callback, profile=profile, threads=threads
    )
