"""The NumPy MLP's BLAS thread count: the limit it sets and restores, and the timed choice between
one thread and all (mnistlab.mlp.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

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


@pytest.fixture
def split():
    """A real RowSplit with one worker thread, BLAS on one thread (as during training)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mnistlab.mlp.threads import RowSplit

    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        rows = RowSplit(2)
        yield rows
        rows.close()


def test_row_split_runs_jobs_on_its_threads_and_deals_lists_in_order(split):
    """``spread`` runs the first job in the calling thread and the others on workers; ``deal``
    hands a list out in order, as evenly as whole items allow."""
    from mnistlab.mlp.threads import deal

    ran = []
    split.spread([lambda: ran.append(threading.current_thread().name)] * 2)
    assert sorted(ran) == sorted([threading.current_thread().name, "mnistlab-rows"])
    assert deal([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4, 5]] and deal([1], 3) == [[], [1], []]
    assert sum(deal(list(range(7)), 3), []) == list(range(7))


def _with_avx2_kernels(code: str, timeout: float = 120) -> str:
    """The output of ``code`` run by a fresh interpreter whose OpenBLAS uses its AVX2 (Haswell)
    kernels, which AVX2-only CPUs get."""
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_row_split_checks_every_cut_against_the_avx2_kernels():
    """``reproduces`` (the check behind the deeper layers' row cut on two threads) tells a cut on
    the AVX2 kernel's 24-row block from one off it, whose rows round differently."""
    pytest.importorskip("threadpoolctl")
    code = (
        "import numpy as np, threadpoolctl\n"
        "from mnistlab.mlp.threads import RowSplit\n"
        "threadpoolctl.threadpool_limits(1, user_api='blas')\n"
        "rng = np.random.default_rng(5)\n"
        "x = rng.integers(0, 256, (500, 483)).astype(np.float32)\n"
        "w = rng.standard_normal((483, 70)).astype(np.float32)\n"
        "split = RowSplit(2)\n"
        "on = split.reproduces(x, w, (0, 240, 500))\n"
        "off = split.reproduces(x, w, (0, 100, 500))\n"
        "whole = x @ w\n"
        "cut = np.concatenate([x[:100] @ w, x[100:] @ w])\n"
        "print(on, off, np.array_equal(cut, whole))\n"
    )
    on, off, off_equal = _with_avx2_kernels(code).split()
    assert (on, off, off_equal) == ("True", "False", "False")


def test_row_split_hands_a_workers_error_to_the_caller(split):
    a = np.ones((400, 30), np.float32)
    wrong, out = np.empty((400, 6), np.float32), np.empty((400, 5), np.float32)
    with pytest.raises(ValueError):
        split.spread([lambda: None, lambda: np.matmul(a, np.ones((30, 5), np.float32), out=wrong)])
    split.spread([lambda: None, lambda: np.matmul(a, np.ones((30, 5), np.float32), out=out)])  # still serves
    np.testing.assert_array_equal(out, 30)


def _feed(choice, seconds_with, batches):
    """Report ``batches`` batches, each taking ``seconds_with[threads it ran with]``."""
    for _ in range(batches):
        choice.batch_done(seconds_with[choice.threads])


def test_thread_choice_probes_both_and_keeps_the_faster(split):
    """ThreadChoice times one thread and the split on alternating batches, keeps the faster (one
    only by a clear margin), gives a probe up as soon as the split is clearly slower, probes again
    when the split's batches drift 25% slower, and re-checks while on one thread after 3 epochs,
    then twice as long each time one thread wins again."""
    from mnistlab.mlp.threads import ThreadChoice

    choice = ThreadChoice(split, batch=1000)  # 8 timed batches per setting, after an untimed one
    assert choice.timed == 8
    choice.start_epoch(0)
    seen = []
    for i in range(8):
        seen.append(choice.threads)
        choice.batch_done(5.0 if i < 2 else {2: 1.0, 1: 0.6}[choice.threads])  # the first two: setup
    assert seen == [1, 2] * 4 and choice.probe is None  # three timed split batches clearly slower: stop
    assert choice.chosen == 1 and not split.active
    assert choice.log == [(0, 1, 1000.0, 600.0)]
    for epoch in (1, 2):  # on one thread: no probe before 3 epochs, and a slower batch is no reason
        choice.start_epoch(epoch)
        _feed(choice, {2: 1.0, 1: 2.0}, 8)
    assert choice.threads == 1 and choice.probe is None
    choice.start_epoch(3)  # the neighbours may have finished: probe again
    assert choice.probe is not None and choice.threads == 1
    _feed(choice, {2: 0.5, 1: 0.6}, 18)
    assert choice.chosen == 2 and split.active and choice.log[-1] == (3, 2, 500.0, 600.0)
    _feed(choice, {2: 0.52, 1: 0.6}, 8)  # 4% slower: no drift
    assert choice.probe is None
    _feed(choice, {2: 0.7, 1: 0.6}, 8)  # 40% slower than when chosen: probe
    assert choice.probe is not None and choice.threads == 1
    _feed(choice, {2: 0.7, 1: 0.69}, 18)  # within 3%: the split stays
    assert choice.chosen == 2 and split.active


def test_thread_choice_asks_longer_slowdowns_after_false_alarms(split):
    """While on the split, a probe that keeps it doubles the slow windows in a row needed before
    the next probe (up to 8); a window at the chosen speed starts the count again."""
    from mnistlab.mlp.threads import ThreadChoice

    choice = ThreadChoice(split, batch=1000)
    choice.start_epoch(0)
    _feed(choice, {2: 0.5, 1: 0.6}, 18)
    assert choice.chosen == 2 and len(choice.log) == 1
    slow = {2: 0.7, 1: 0.7}  # the machine got slower for both: re-probing only costs time
    windows_before_probe = []
    for _ in range(5):
        windows = 0
        while choice.probe is None:
            _feed(choice, {2: 0.9, 1: 0.7}, 8)  # over 25% slower than the last probe's split batches
            windows += 1
            if windows == 3 and len(windows_before_probe) == 3:
                _feed(choice, {2: 0.5, 1: 0.7}, 8)  # one window back at speed: the count restarts
        _feed(choice, slow, 18)
        assert choice.chosen == 2 and choice.probe is None
        windows_before_probe.append(windows)
    assert windows_before_probe == [1, 2, 4, 8 + 3, 8]


def _inked_images(n, seed=0):
    """uint8 images like MNIST's: a blank border, a dense centre and rare ink around it, so the
    trainer's layout has inactive columns and a staircase of several groups."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    centre = rng.integers(0, 256, (n, 16, 16)) * (rng.random((n, 16, 16)) < 0.4)
    images[:, 6:22, 6:22] = centre
    rare = rng.random((n, 28, 28)) < 0.001
    rare[:, 6:22] = False
    rare[:, :3] = rare[:, 25:] = False
    images[rare] = 200
    return images, rng.integers(0, 10, n)


def test_training_on_two_threads_gives_the_weights_of_one_thread():
    """The same weights and history, bit for bit, on one thread, on the split's two (each thread
    gathering and multiplying its groups of a chunk's rows, the next chunk's gathered ahead, the
    first layer's gradient column blocks divided, the test pass by blocks) and with the timed
    choice switching between them; the limit is restored after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mnistlab.data import Preprocessor

    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    images, labels = _inked_images(3000)
    test_images, test_labels = _inked_images(2500, seed=1)
    cfg = MLPConfig(hidden=(70, 30), epochs=6, batch_size=500, seed=2)  # 36 batches: a whole probe
    pre = Preprocessor.fit(cfg.preprocess, images)
    weights, histories = {}, {}
    for threads, adapt in ((1, False), (2, False), (2, True)):
        trainer = Trainer(MLP(cfg, preprocess=pre), adapt_threads=adapt)
        history = trainer.fit(images, labels, test=(test_images, test_labels), threads=threads)
        assert trainer.threads == threads
        weights[threads, adapt] = trainer.model.params
        histories[threads, adapt] = [{k: v for k, v in row.items() if "seconds" not in k} for row in history]
        if threads == 2 and not adapt:
            backprop = trainer.fit_state.backprop
            assert backprop.products is None and backprop.ahead is None  # the epoch's last chunk has no next
            assert backprop.updated  # each thread updated what it computed the gradient of
        if adapt:
            assert trainer.thread_choice.log and trainer.thread_choice.log[0][1] in (1, 2)
            assert any(trainer.fit_state.backprop.deeper_cuts.values())  # the threads shared the chunks
        else:
            assert trainer.thread_choice is None
    assert trainer.layout["groups"] > 1 and trainer.layout["blank"] > 0
    np.testing.assert_array_equal(weights[2, False], weights[1, False])
    np.testing.assert_array_equal(weights[2, True], weights[1, False])
    assert histories[2, False] == histories[1, False] == histories[2, True]
    model = MLP(cfg, preprocess=pre)
    model.params[:] = weights[1, False]
    assert histories[1, False][-1]["test_accuracy"] == model.accuracy(pre(test_images), test_labels)
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before


_PIPELINE_RUN = """
import sys, numpy as np, threadpoolctl
sys.path.insert(0, {tests!r})
from test_mlp_threads import _inked_images
from mnistlab.data import Preprocessor
from mnistlab.mlp import MLP, MLPConfig, Trainer, backprop
assert threadpoolctl.threadpool_info()[0]['architecture'] == 'Haswell'
used = {{'shared': 0, 'ahead': 0}}
deeper_cut, first_layer_rows = backprop.Backprop._deeper_cut, backprop.Backprop._first_layer_rows
def counted_cut(self, k, cut):
    used['shared'] += 1  # asked only for a chunk the threads share
    return deeper_cut(self, k, cut)
def counted_rows(self, groups, lo, hi, phases=None, gathered=False):
    used['ahead'] += gathered
    return first_layer_rows(self, groups, lo, hi, phases, gathered)
backprop.Backprop._deeper_cut, backprop.Backprop._first_layer_rows = counted_cut, counted_rows
kept_deeper_cut = []
images, labels = _inked_images(2300)
test = _inked_images(1500, seed=1)
for batch in (500, 1000):  # one chunk per batch; two chunks, their gradients summed
    cfg = MLPConfig(hidden=(70, 30), epochs=2, batch_size=batch, seed=3)
    pre = Preprocessor.fit(cfg.preprocess, images)
    runs = []
    for threads in (1, 2):
        trainer = Trainer(MLP(cfg, preprocess=pre), adapt_threads=False)
        history = trainer.fit(images, labels, test=test, threads=threads)
        kept = [(r['test_accuracy'], r['loss'], r['train_accuracy']) for r in history]
        runs.append((trainer.model.params, kept))
        kept_deeper_cut += trainer.fit_state.backprop.deeper_cuts.values()
    assert np.array_equal(runs[0][0], runs[1][0]), 'weights differ'
    assert runs[0][1] == runs[1][1], 'history differs'
print(used['shared'], used['ahead'], all(kept_deeper_cut))
"""


def test_training_on_two_threads_is_bit_identical_with_avx2_kernels():
    """The whole training step on two threads with OpenBLAS's AVX2 (Haswell) kernels, whose row
    block (24) differs from the AVX-512 kernels': the same weights and history as one thread, with
    the products divided between threads and rows gathered ahead, for one and for two chunks per
    batch; the thread boundary lies on the kernel's row block, so the deeper layers run cut there."""
    pytest.importorskip("threadpoolctl")
    code = _PIPELINE_RUN.format(tests=os.path.dirname(os.path.abspath(__file__)))
    shared, ahead, deeper_cut = _with_avx2_kernels(code, timeout=300).split()
    # 10 chunks per epoch shared by the threads, most gathered ahead
    assert int(shared) >= 10 and int(ahead) >= 8 and deeper_cut == "True"
