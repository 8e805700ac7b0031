"""benchmarks/cpu_class.py: holding a wider CPU to AVX2 for every benchmark contender."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_class.py"
_spec = importlib.util.spec_from_file_location("cpu_class", _PATH)
cpu_class = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_class)


def test_class_environments():
    base = {"PATH": "/bin", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert cpu_class.class_env("native", base) == base
    if "avx2" not in cpu_class.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    held = cpu_class.class_env("avx2", base)
    assert held["ONEDNN_MAX_CPU_ISA"] == "AVX2" and held["ATEN_CPU_CAPABILITY"] == "avx2"
    assert held["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX2"  # added to what was there
    assert held["OPENBLAS_CORETYPE"] == "Haswell" and held["PATH"] == "/bin"
    assert base == {"PATH": "/bin", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}  # a copy
    with pytest.raises(ValueError, match="unknown CPU class 'avx512'"):
        cpu_class.class_env("avx512")
    assert cpu_class.hardware_isa({"avx2", "fma"}) == "AVX2"
    assert cpu_class.hardware_isa({"avx2", "avx512f", "avx512_bf16", "amx_tile"}) == "AMX + AVX-512 BF16"


@pytest.mark.slow
def test_the_probe_reports_what_torch_actually_ran_held_to_avx2():
    if "avx2" not in cpu_class.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    line = cpu_class.probe("torch", "avx2", python=sys.executable)
    assert "ATen AVX2" in line and "oneDNN Intel AVX2" in line and "avx2" in line
