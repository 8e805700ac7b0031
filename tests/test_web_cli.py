"""`mnistlab serve`: arguments, the printed URL, binding to 127.0.0.1, and a clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mnistlab.cli import build_parser, main

pytest.importorskip("uvicorn")


def test_serve_defaults_bind_to_localhost():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.runs) == ("127.0.0.1", 8000, "runs")
    args = build_parser().parse_args(["serve", "--runs", "r", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port, args.runs) == ("0.0.0.0", 9000, "r")


def test_bad_port_is_one_line_and_exit_1(capsys):
    assert main(["serve", "--port", "70000"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--port 70000" in err and "\n" not in err


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, capsys):
    with socket.socket() as busy:  # another server already listening there
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--runs", str(tmp_path), "--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    assert f"127.0.0.1:{port} is in use" in err and "another --port" in err and not out


def test_non_numeric_port_is_a_usage_error(capsys):
    assert main(["serve", "--port", "eighty"]) == 2


def test_serve_prints_the_url_and_answers(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_web_helpers import write_tiny_run

    write_tiny_run(tmp_path / "runs" / "tiny")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "serve", "--runs", str(tmp_path / "runs"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = match.group(0)
        with urllib.request.urlopen(url + "api/runs", timeout=10) as r:
            assert [run["name"] for run in json.load(r)["runs"]] == ["tiny"]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"mnistlab" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGINT, 130)


def test_missing_runs_dir_is_a_note_not_an_error(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "serve", "--runs", str(tmp_path / "none"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "http://127.0.0.1:" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert "does not exist yet" in err


def test_threads_must_be_positive(capsys):
    assert main(["serve", "--threads", "0"]) == 1
    assert "--threads 0" in capsys.readouterr().err


def test_torch_threads_are_set_once_a_model_brought_torch(tmp_path, monkeypatch):
    import types

    from mnistlab.web.app import _with_torch_threads
    from test_web_helpers import TinyModel, write_tiny_run

    calls = []
    fake = types.SimpleNamespace(get_num_threads=lambda: 4, set_num_threads=calls.append)
    write_tiny_run(tmp_path / "tiny")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    load = _with_torch_threads(TinyModel.from_run_dir, 1)
    load(tmp_path / "tiny")
    assert calls == []  # an MLP-only server never imports torch
    monkeypatch.setitem(sys.modules, "torch", fake)
    load(tmp_path / "tiny")
    assert calls == [1]
