"""Two sweep workers on a real PostgreSQL server; one is killed with SIGKILL in the middle of a trial.

The test starts Debian's PostgreSQL itself (initdb and pg_ctl in a temporary directory, a loopback
port, run as the unprivileged user `nobody` since PostgreSQL refuses root) and stops it afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from sweep_workers import check_complete_study, finish, start_worker, wait_for_running_trial

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian package postgresql; `make test` installs it as root)"
        )
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as the unprivileged user `nobody` needs root (runuser)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="mnistlab-pg-"))  # in /tmp: `nobody` can reach it
    shutil.chown(home, "nobody", "nogroup")
    data = home / "data"

    def as_nobody(*cmd: str) -> None:
        subprocess.run(
            ["runuser", "-u", "nobody", "--", *cmd], check=True, capture_output=True, timeout=120, cwd=home
        )

    try:
        as_nobody(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        as_nobody(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(home / "log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "nobody",
                    "--",
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(home, ignore_errors=True)


def test_a_worker_killed_mid_trial_is_retried_and_the_study_still_completes(
    tmp_path, real_home, postgres_url
):
    runs = tmp_path / "runs"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    victim = start_worker("pg", 6, runs, postgres_url, logs[0])
    survivor = start_worker("pg", 6, runs, postgres_url, logs[1])
    killed = wait_for_running_trial("pg", postgres_url, victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    out = finish(survivor, logs[1])
    assert survivor.returncode == 0 and "6 of 6 trials finished" in out, out
    trials = check_complete_study("pg", postgres_url, runs, 6)
    failed = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("surplus")]
    assert [t.number for t in failed] == [killed]  # failed by the heartbeat, nothing else
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == failed[0].params and f"retry of trial {killed}" in out
    assert not (
        runs / f"sweeps/pg/trial-{killed:04d}" / "run.json"
    ).exists()  # the killed trial never completed
    # `sweep show` reads the same study from the server
    show = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "mnistlab",
            "sweep",
            "show",
            "pg",
            "--storage",
            postgres_url,
            "--runs",
            str(runs),
            "--no-test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "MNISTLAB_HOME"},
    )
    assert show.returncode == 0, show.stderr
    assert f"{len(trials)} trials, 6 wanted" in show.stdout
    assert f"\n{killed}" in show.stdout and "fail" in show.stdout
