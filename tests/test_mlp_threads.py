"""The NumPy MLP's BLAS thread count: the limit it sets and restores, and the timed choice between
one thread and all (mnistlab.mlp.threads)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mnistlab.errors import ConfigError
from mnistlab.mlp import MLP, MLPConfig, Trainer
from test_mlp import _toy  # the same toy data


def test_blas_thread_limit():
    from mnistlab.mlp.threads import resolve

    # auto starts from every core the process may use, whatever ran in the last minute; then it times
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve("auto") == cores
    assert resolve(None) is None and resolve(2) == 2
    with pytest.raises(ConfigError, match="threads must be a positive integer or 'auto'"):
        resolve(0)
    x, y = _toy(100)
    trainer = Trainer(MLP(MLPConfig(input_size=12, hidden=(4,), n_classes=4, epochs=1)))
    trainer.fit(x, y, threads=1)
    pytest.importorskip("threadpoolctl")
    assert trainer.threads == 1


class _FakeBlas:
    def __init__(self):
        self.calls = []

    def set_num_threads(self, n):
        self.calls.append(n)


def test_thread_choice_probes_both_and_keeps_the_faster():
    """ThreadChoice times batches with one BLAS thread and with all allowed, keeps the faster (one
    only by a clear margin), gives a many-thread probe up as soon as it is clearly slower, probes
    again when the many-thread batches drift 25% slower, and re-checks while on one thread after
    3 epochs, then twice as long each time one thread wins again."""
    from mnistlab.mlp.threads import ThreadChoice

    blas = _FakeBlas()
    choice = ThreadChoice(2, batch=1000, libs=[blas])  # skip 3 batches, time 8, per setting
    assert (choice.skip, choice.timed) == (3, 8)

    def run(seconds_with, batches):
        for _ in range(batches):
            choice.batch_done(seconds_with[blas.calls[-1]])

    choice.start_epoch(0)
    assert blas.calls == [1]  # one thread first: the reference
    run({2: 1.0, 1: 0.6}, 11)  # 3 skipped + 8 timed with one thread
    assert blas.calls == [1, 2]
    run({2: 1.0, 1: 0.6}, 5)  # 3 skipped + 2 timed with two: clearly slower, the probe ends there
    assert blas.calls[-1] == 1 and choice.chosen == 1 and not choice.steps
    assert choice.log == [(0, 1, 1000.0, 600.0)]
    for epoch in (1, 2):  # on one thread: no probe before 3 epochs, and a slower batch is no reason
        choice.start_epoch(epoch)
        run({2: 1.0, 1: 2.0}, 8)
    assert blas.calls[-1] == 1 and not choice.steps
    choice.start_epoch(3)  # the neighbours may have finished: probe again
    assert choice.steps and blas.calls[-1] == 1
    run({2: 0.5, 1: 0.6}, 22)
    assert choice.chosen == 2 and choice.log[-1] == (3, 2, 500.0, 600.0)
    run({2: 0.52, 1: 0.6}, 8)  # 4% slower: no drift
    assert blas.calls[-1] == 2 and not choice.steps
    run({2: 0.7, 1: 0.6}, 8)  # 40% slower than when chosen: probe
    assert choice.steps and blas.calls[-1] == 1
    run({2: 0.7, 1: 0.69}, 22)  # within 3%: the default stays
    assert choice.chosen == 2


def test_thread_choice_backs_off_while_one_thread_keeps_winning():
    from mnistlab.mlp.threads import ThreadChoice

    blas = _FakeBlas()
    choice = ThreadChoice(2, batch=1000, libs=[blas])
    busy = {1: 0.6, 2: 10.0}  # a settling batch of two threads already far too slow: no timed ones
    probes = []
    for epoch in range(20):
        choice.start_epoch(epoch)
        if choice.steps:
            probes.append(epoch)
        for _ in range(14):
            choice.batch_done(busy[blas.calls[-1]])
    assert probes == [0, 3, 9]  # waits of 3, then 6, then 12 epochs
    assert all(chosen == 1 for _, chosen, _, _ in choice.log)
    assert blas.calls.count(2) == len(probes)  # each two-thread probe stopped after one settling batch


def test_training_with_two_threads_records_its_choice_and_restores_the_limit():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    x, y = _toy(12000)  # 24 batches of 500 an epoch; a probe takes 2 x (6 + 16)
    model = MLP(MLPConfig(input_size=12, hidden=(8,), n_classes=4, epochs=2, batch_size=500))
    trainer = Trainer(model)
    trainer.fit(x, y, threads=2)
    assert trainer.threads == 2 and len(trainer.thread_choice.log) >= 1
    assert trainer.thread_choice.log[0][1] in (1, 2)
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before
    off = Trainer(MLP(model.config), adapt_threads=False)
    off.fit(x, y, threads=2)
    assert off.thread_choice is None
    np.testing.assert_array_equal(off.model.params, model.params)  # the thread count never changes results
