"""benchmarks/rounds.py: the rounds, worker processes and medians every CPU benchmark shares."""

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rounds  # noqa: E402  (benchmarks/ is not a package)


def test_every_contender_takes_every_place_once_over_as_many_rounds():
    names = ["a", "b", "c"]
    orders = [rounds.rotated(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert rounds.rotated(names, 4) == orders[1]


def test_rounds_rotate_and_print_a_line_per_result(capsys):
    measured = iter(range(4))

    def run(name):
        n = next(measured)
        return {"error": "exit 1: boom"} if n == 3 else {"n": n, "acc": 0.5, "wall_s": 2.0}

    def describe(res):
        return f"measure {res['n']}", res["acc"], "1 thread"

    results = rounds.run_rounds(["a", "bb"], 2, run, describe)
    assert results == {
        "a": [{"n": 0, "acc": 0.5, "wall_s": 2.0}, {"error": "exit 1: boom"}],
        "bb": [{"n": 1, "acc": 0.5, "wall_s": 2.0}, {"n": 2, "acc": 0.5, "wall_s": 2.0}],
    }
    assert capsys.readouterr().out.splitlines() == [
        "  round 1 a  measure 0  test acc 50.00%  (1 thread, wall 2 s)",
        "  round 1 bb measure 1  test acc 50.00%  (1 thread, wall 2 s)",
        "  round 2 bb measure 2  test acc 50.00%  (1 thread, wall 2 s)",
        "  round 2 a  FAILED: exit 1: boom",
    ]


def test_the_common_options_take_both_spellings_of_rounds():
    parser = argparse.ArgumentParser()
    rounds.add_common_options(parser, rounds=3, threads=2, threads_help="threads")
    assert parser.parse_args([]).rounds == 3
    args = parser.parse_args(["--runs", "5", "--cpu-class", "avx2", "--json", "out.json"])
    assert (args.rounds, args.threads, args.cpu_class, args.json) == (5, 2, "avx2", "out.json")
    assert parser.parse_args(["--rounds", "4"]).rounds == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpu-class", "avx512"])


def test_a_worker_process_gives_its_marked_json_line_or_an_error():
    said = 'print("noise"); print("RESULT {\\"epoch_s\\": [2.0, 1.0]}"); print("after")'
    result = rounds.run_worker([sys.executable, "-c", said], marker="RESULT ")
    assert result["epoch_s"] == [2.0, 1.0] and result["wall_s"] > 0
    failed = rounds.run_worker([sys.executable, "-c", "import sys; sys.exit('out of memory')"])
    assert failed["error"] == "exit 1: out of memory"
    slow = rounds.run_worker([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow["error"] == "over the 0.5 s timeout"


def test_medians_leave_out_first_epochs_and_failed_runs():
    runs = [{"epoch_s": [9.0, 1.0, 3.0]}, {"epoch_s": [9.0, 2.0]}, {"error": "exit 1"}, {"epoch_s": [4.0]}]
    assert rounds.pooled_epochs(runs, scale=2.0) == [2.0, 6.0, 4.0, 8.0]
    assert rounds.epoch_median(runs) == 2.5
    assert math.isnan(rounds.epoch_median([{"error": "exit 1"}]))
