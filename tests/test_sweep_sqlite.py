"""Sweep workers as real processes on one SQLite study: two in parallel, Ctrl-C and a rerun, bad URLs."""

from __future__ import annotations

import signal
import subprocess
import sys

import optuna
import pytest

from sweep_workers import check_complete_study, finish, load, start_worker, wait_for_running_trial

pytestmark = pytest.mark.slow  # the real MNIST, several processes


def test_two_workers_share_one_study_and_stop_at_its_total(tmp_path, real_home):
    runs, storage = tmp_path / "runs", f"sqlite:///{tmp_path}/runs/sweeps.db"
    workers = [start_worker("two", 6, runs, storage, tmp_path / f"w{i}.log") for i in range(2)]
    logs = [finish(w, tmp_path / f"w{i}.log") for i, w in enumerate(workers)]
    assert [w.returncode for w in workers] == [0, 0], logs
    trials = check_complete_study("two", storage, runs, 6)
    # 6 in all, not 6 per worker. Two workers asking at the same moment for the last trial may get
    # one too many: that one is failed at once as surplus, before it trains anything.
    extra = [t for t in trials if t.state.name != "COMPLETE"]
    assert len(trials) <= 7
    assert all(t.user_attrs.get("surplus") and "epochs" not in t.user_attrs for t in extra)
    # Usually both workers take trials; on a loaded machine one may finish them all before the
    # other has loaded MNIST, which must end the same way.
    assert {t.user_attrs["pid"] for t in trials} <= {w.pid for w in workers}
    for log in logs:
        assert "6 of 6 trials finished" in log


def test_ctrl_c_ends_the_current_trial_and_a_rerun_continues_the_study(tmp_path, real_home):
    runs, storage = tmp_path / "runs", f"sqlite:///{tmp_path}/runs/sweeps.db"
    log = tmp_path / "w.log"
    worker = start_worker("stop", 4, runs, storage, log)
    number = wait_for_running_trial("stop", storage, worker.pid)
    worker.send_signal(signal.SIGINT)
    out = finish(worker, log)
    assert worker.returncode == 130, out
    assert (
        "interrupted; a trial this worker was running is marked failed. Rerun the same command" in out
        and "Traceback" not in out
    )
    study = load("stop", storage)
    assert study.trials[number].state == optuna.trial.TrialState.FAIL
    assert not (runs / f"sweeps/stop/trial-{number:04d}").exists()
    worker = start_worker("stop", 4, runs, storage, log)
    out = finish(worker, log)
    assert worker.returncode == 0 and "4 of 4 trials finished" in out, out
    trials = check_complete_study("stop", storage, runs, 4)
    assert [t.state.name for t in trials].count("FAIL") == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql://u:secret@127.0.0.1:1/db",
            "storage 'postgresql://u:***@127.0.0.1:1/db': cannot open it (",
        ),
        ("redis://localhost", "storage 'redis://localhost': not a database URL; use sqlite:///PATH"),
        ("sqlite:////proc/no/such.db", "storage 'sqlite:////proc/no/such.db': cannot"),
    ],
)
def test_a_wrong_or_unreachable_storage_gets_one_line(tmp_path, url, says):
    for args in (["sweep", "mlp", "--study", "x", "--trials", "2"], ["sweep", "show", "x"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mnistlab", *args, "--storage", url],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mnistlab: error: {says}"), proc.stderr
        assert "secret" not in proc.stderr
