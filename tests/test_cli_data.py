import pytest

from mnistlab.cli import main


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert "mnistlab 0." in capsys.readouterr().out
    assert main(["data", "show", "--help"]) == 0
    assert "--index" in capsys.readouterr().out


def test_usage_error_exits_2_with_one_line(capsys):
    assert main(["data", "show", "--out", "x.png", "--frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments" in err[0]
    assert main(["data", "info", "--dataset", "kmnist"]) == 2


def test_fetch_info_show_verify(synthetic_dataset, tmp_path, capsys):
    directory, arrays = synthetic_dataset
    assert main(["data", "fetch", "--data-dir", str(directory)]) == 0
    assert "served from IDX files" in capsys.readouterr().err
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "train       120 images" in out and "0:12" in out
    png = tmp_path / "grid.png"
    assert main(["data", "show", "--index", "3", "--index", "5-7", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "verify"]) == 0


def test_errors_are_one_line_exit_1(synthetic_dataset, capsys, tmp_path):
    directory, _ = synthetic_dataset
    assert main(["data", "verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mnistlab data fetch" in err[0]
    assert (
        main(
            ["data", "show", "--data-dir", str(directory), "--index", "999", "--out", str(tmp_path / "x.png")]
        )
        == 1
    )
    assert "index 999 is outside the test split (0..39)" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing-run")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_debug_shows_the_traceback(synthetic_dataset):
    from mnistlab.errors import MnistlabError

    with pytest.raises(MnistlabError):
        main(["--debug", "data", "verify"])


def test_train_commands_read_a_data_dir(synthetic_dataset, tmp_path, capsys):
    """`train mlp` and `train cnn` take --data-dir like the data commands (IDX files on disk)."""
    pytest.importorskip("torch")
    directory, _ = synthetic_dataset
    assert main(["train", "mlp", "--data-dir", str(directory), "--epochs", "1", "--batch-size", "20",
                 "--layers", "8", "--out", str(tmp_path / "mlp"), "--no-progress"]) == 0
    assert "served from IDX files" in capsys.readouterr().err
    assert (
        main(
            [
                "train", "cnn", "--data-dir", str(directory), "--spec", "conv:4:3,pool:2,flatten,output:10",
                "--epochs", "1", "--batch-size", "32", "--threads", "1", "--out", str(tmp_path / "cnn"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "cnn" / "weights.npz").is_file() and (tmp_path / "mlp" / "weights.npz").is_file()
    assert main(["train", "mlp", "--dataset", "kmnist"]) == 2  # unknown names are refused by the parser


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize("command", [["summary", "--spec", "seed"], ["data", "--help"]])
def test_a_closed_output_pipe_ends_quietly(command, unbuffered):
    """`mnistlab summary RUN | head -1`: the reader goes away (here before the first write, so that
    the test does not race it); the command ends without a word, whether Python buffers its output
    or not, with 141 as Unix tools that SIGPIPE ended (128 + 13). (argparse itself passes over a
    failed write of --help, and ends with 0.)"""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mnistlab", *command], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    if "--help" not in command:
        assert proc.returncode == 141


def test_only_a_closed_reader_counts_as_a_closed_output():
    """A BrokenPipeError of some other pipe stays an error: only a gone reader of stdout/stderr is quiet."""
    import os

    from mnistlab.cli import _reader_gone

    read_end, write_end = os.pipe()
    with open(write_end, "w") as stream:
        assert not _reader_gone(stream)
        os.close(read_end)
        assert _reader_gone(stream)
