"""The trainer's process-wide settings happen only while run() runs, and are undone after it."""

import platform

import pytest

torch = pytest.importorskip("torch")

from mnistlab.cnn import Trainer, resolve_config  # noqa: E402
from mnistlab.cnn.levers import process_settings, torch_threads  # noqa: E402


def test_building_a_trainer_changes_nothing_in_the_process_and_run_restores_it(tmp_path):
    from test_cnn_train import synthetic

    spec = "conv:4:3,pool:2,flatten,output:10"
    config = resolve_config(spec=spec, epochs=1, batch_size=32, amp="off", threads=2, preprocess="unit")
    before = (torch.get_num_threads(), torch.backends.cudnn.benchmark)
    try:
        torch.set_num_threads(3)
        trainer = Trainer(config, synthetic(64, 32), tmp_path / "run", progress=False)
        assert (torch.get_num_threads(), torch.backends.cudnn.benchmark) == (3, before[1])
        seen = []
        trainer.step_callback = lambda t, step: seen.append(torch.get_num_threads())
        trainer.run()
        assert seen == [trainer.levers.step_threads] * 2  # the steps run with their share
        assert (torch.get_num_threads(), torch.backends.cudnn.benchmark) == (3, before[1])
        on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        assert trainer.levers.reuse_freed_memory == on_glibc  # recorded as applied
    finally:
        torch.set_num_threads(before[0])


def test_settings_are_restored_when_the_block_fails():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    from mnistlab.cnn.levers import Levers

    levers = Levers("cuda", None, False, False, False, threads=before)
    cudnn = torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError), process_settings(levers):
        assert torch.backends.cudnn.benchmark is True
        raise RuntimeError("boom")
    assert torch.backends.cudnn.benchmark == cudnn and torch.get_num_threads() == before
