"""The MLP's two-thread hand-overs (mlp/backprop.py: the worker waits for the calling thread's
deltas, then each thread updates the parameters whose gradient it computed; mlp/evaluate.py: the
calling thread waits for the workers' blocks): the threads' update ranges cover every parameter
once, and an error on either side reaches the caller of ``fit`` with no thread left waiting for a
partner that failed."""

from __future__ import annotations

import threading

import pytest

from mnistlab.mlp import MLP, MLPConfig, Trainer, backprop, evaluate, optimizers
from test_mlp_threads import _inked_images  # MNIST-like images: the threads share the chunks

WORKER = "mnistlab-rows"  # RowSplit's worker threads


def _fit_raises(seconds: float = 60, **config) -> BaseException | None:
    """The error of a short two-thread fit run on its own thread; fails if the fit hangs."""
    pytest.importorskip("threadpoolctl")
    images, labels = _inked_images(1500)
    test = _inked_images(1200, seed=1)
    cfg = MLPConfig(**{"hidden": (70, 30), "epochs": 1, "batch_size": 500, "seed": 2, **config})
    trainer = Trainer(MLP(cfg), adapt_threads=False)
    raised: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit(images, labels, test=test, threads=2)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the fit hangs: a thread waits for a partner that failed"
    return raised[0] if raised else None


def _failing(method, where: str):
    def failing(self, *args, **kwargs):
        if (threading.current_thread().name == WORKER) == (where == "worker"):
            raise RuntimeError(f"{method.__name__} failed on the {where}")
        return method(self, *args, **kwargs)

    return failing


@pytest.mark.parametrize(
    ("cls", "name", "where"),
    [
        (backprop.Backprop, "_hidden_deltas", "caller"),  # a worker waits for these deltas
        (backprop.Backprop, "_gather_ahead", "worker"),  # the worker's first job of the hand-over
        (evaluate.SplitEval, "_first_layer", "worker"),  # the caller waits for the worker's blocks
        (evaluate.SplitEval, "_first_layer", "caller"),
    ],
)
def test_an_error_on_either_thread_reaches_the_caller_and_nothing_waits(monkeypatch, cls, name, where):
    method = getattr(cls, name)
    monkeypatch.setattr(cls, name, _failing(method, where))
    error = _fit_raises()
    assert isinstance(error, RuntimeError) and str(error) == f"{name} failed on the {where}"
    monkeypatch.setattr(cls, name, method)
    assert _fit_raises() is None  # the same fit, unpatched, trains


@pytest.mark.parametrize("hidden", [(70, 30), (16,)])
def test_the_threads_update_ranges_cover_every_parameter_once(monkeypatch, hidden):
    """Each step's ranges (the calling thread's and the worker's) tile the flat parameters, none
    crossing from the weights into the biases (whose update has no L2 term)."""
    steps: list[list[tuple[int, int, str]]] = []
    range_step, end_range_step = optimizers.SGD.range_step, optimizers.SGD.end_range_step

    def recorded_range_step(self, lr):
        update = range_step(self, lr)
        ranges: list[tuple[int, int, str]] = []

        def recorded(lo, hi):
            ranges.append((lo, hi, threading.current_thread().name))
            update(lo, hi)

        steps.append(ranges)
        return recorded

    def checked_end_range_step(self):
        nw, size = self.working.n_weights, self.working.size
        ranges = sorted((lo, hi) for lo, hi, _ in steps[-1] if lo < hi)
        if ranges:  # else the whole step (SGD.step ends with this too)
            assert [lo for lo, _ in ranges] == [0] + [hi for _, hi in ranges[:-1]] and ranges[-1][1] == size
            assert all(hi <= nw or lo >= nw for lo, hi in ranges)
            steps[-1].append((0, 0, "ended"))
        end_range_step(self)

    monkeypatch.setattr(optimizers.SGD, "range_step", recorded_range_step)
    monkeypatch.setattr(optimizers.SGD, "end_range_step", checked_end_range_step)
    assert _fit_raises(hidden=hidden, l2=1e-4) is None
    ended = [ranges for ranges in steps if ranges and ranges[-1][2] == "ended"]
    assert len(ended) >= 2  # the batches whose gradient both threads computed
    assert all({WORKER, "ended"} < {name for _, _, name in ranges} for ranges in ended)
