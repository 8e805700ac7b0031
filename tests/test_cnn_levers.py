"""The trainer's process-wide settings happen only while run() runs, and are undone after it."""

import platform
import threading

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


def _drive(choice, seconds_together: float, seconds_apart: float, steps: int) -> list[bool]:
    """Feed ``choice`` the step times of a machine where the parts take these times each way."""
    ways = []
    for _ in range(steps):
        together = choice.together()
        ways.append(together)
        choice.record(seconds_together if together else seconds_apart)
    return ways


def test_parts_keep_running_together_on_idle_cores_and_trials_grow_rare():
    from mnistlab.cnn.levers import PartsTogether

    choice = PartsTogether()
    ways = _drive(choice, 0.0065, 0.0115, 3000)  # together: the 2-core step; apart: both parts on one core
    assert ways[: PartsTogether.FIRST] == [True] * PartsTogether.FIRST
    assert choice.switches == 0 and choice.current is True
    trials = [k for k in range(1, len(ways)) if not ways[k] and ways[k - 1]]
    assert trials[0] == PartsTogether.FIRST
    gaps = [b - a - PartsTogether.TRIAL for a, b in zip(trials, trials[1:])]
    assert gaps == sorted(gaps) and gaps[-1] == PartsTogether.LONGEST  # each lost trial doubles the gap
    assert choice.steps[False] == PartsTogether.TRIAL * len(trials) < 0.01 * len(ways)


def test_parts_run_one_after_another_while_a_core_is_held_and_together_again_when_it_frees():
    from mnistlab.cnn.levers import PartsTogether

    choice = PartsTogether()
    ways = _drive(choice, 0.0130, 0.0115, PartsTogether.FIRST + PartsTogether.TRIAL)
    assert ways[-PartsTogether.TRIAL:] == [False] * PartsTogether.TRIAL and choice.current is False
    ways = _drive(choice, 0.0130, 0.0115, 500)  # still held: trials of running together lose
    assert ways.count(True) <= PartsTogether.TRIAL * (500 // PartsTogether.SHORTEST)
    _drive(choice, 0.0065, 0.0115, 2 * PartsTogether.SHORTEST)  # the core is free again
    assert choice.current is True and choice.switches == 2


def test_a_noisy_trial_of_similar_times_does_not_switch():
    from mnistlab.cnn.levers import PartsTogether

    choice = PartsTogether()
    _drive(choice, 0.0100, 0.0098, 2000)  # within 5%: not worth a switch
    assert choice.switches == 0 and choice.current is True


def test_parts_started_one_after_another_go_together_once_the_cores_are_free():
    """Under --threads auto a run starts the way the CPU probe chose: one after another while
    other processes held the cores; the steps' own times bring the parts together later."""
    from mnistlab.cnn.levers import PartsTogether, SplitBatch

    split = SplitBatch(2, threads=2, together=False)
    x, y = torch.zeros(4, 3), torch.arange(4)
    seen = []

    def part(xp, yp, batch):
        seen.append(threading.current_thread() is threading.main_thread())
        return [xp.sum(0)], xp.sum(), yp.sum()

    grads, _ = split.run(part, x, y)
    assert seen == [True, True] and split._pool is None  # both parts on the calling thread
    assert torch.equal(grads[0], x.sum(0))
    choice = split.choice
    ways = _drive(choice, 0.0065, 0.0115, PartsTogether.FIRST + PartsTogether.TRIAL)
    assert ways[-PartsTogether.TRIAL:] == [True] * PartsTogether.TRIAL
    assert choice.current is True and choice.switches == 1
    split.close()
