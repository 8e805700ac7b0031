"""Time to import the seed-sized Keras CNN (96,844 parameters) from each file layout.

    PYTHONPATH=src python benchmarks/bench_import.py [--repeat 5]

Prints the median in-process time of ``import_model`` per fixture (torch already imported) and the
wall time of one cold ``mnistlab import`` process (Python start and torch import included), with the
CPU model and thread count; the machine is shared, so compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_class import cpu_model  # noqa: E402  (benchmarks/ is not a package)

FIXTURES = ROOT / "tests" / "fixtures" / "keras"
FILES = ("seed.keras", "seed_keras3.h5", "seed_tf_keras.h5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import torch

    from mnistlab.importers import import_model

    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            times = []
            for i in range(args.repeat + 1):
                start = time.perf_counter()
                import_model("keras", FIXTURES / name, Path(tmp) / f"{name}-{i}")
                times.append(time.perf_counter() - start)
            print(
                f"import_model {name:<18} median {statistics.median(times[1:]) * 1000:7.1f} ms "
                f"(first call {times[0] * 1000:.1f} ms, {args.repeat} more)"
            )
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mnistlab",
                "import",
                "keras",
                str(FIXTURES / "seed.keras"),
                "--out",
                str(Path(tmp) / "cli"),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        print(f"cold `mnistlab import keras seed.keras` process: {time.perf_counter() - start:.2f} s wall")


if __name__ == "__main__":
    main()
