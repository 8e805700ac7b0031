"""An error on either side of the MLP's two-thread hand-overs (mlp/backprop.py: the worker waits for
the calling thread's deltas; mlp/evaluate.py: the calling thread waits for the workers' blocks)
reaches the caller of ``fit``, and no thread is left waiting for a partner that failed."""

from __future__ import annotations

import threading

import pytest

from mnistlab.mlp import MLP, MLPConfig, Trainer, backprop, evaluate
from test_mlp_threads import _inked_images  # MNIST-like images: the threads share the chunks

WORKER = "mnistlab-rows"  # RowSplit's worker threads


def _fit_raises(seconds: float = 60) -> BaseException | None:
    """The error of a short two-thread fit run on its own thread; fails if the fit hangs."""
    pytest.importorskip("threadpoolctl")
    images, labels = _inked_images(1500)
    test = _inked_images(1200, seed=1)
    cfg = MLPConfig(hidden=(70, 30), epochs=1, batch_size=500, seed=2)
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
