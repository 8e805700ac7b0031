"""Which CPU a benchmark ran on, and holding an AMX / AVX-512 machine to AVX2 for a run.

``--cpu-class native`` runs every contender with what the CPU has; ``--cpu-class avx2`` sets, for
every contender process, the variables that make each library dispatch to its AVX2 code as it
would on an AVX2-only CPU (AMD EPYC / Ryzen, most laptops and cloud VMs):

* oneDNN (PyTorch's convolutions, TensorFlow's oneDNN ops): ``ONEDNN_MAX_CPU_ISA=AVX2``
* PyTorch's own kernels (ATen): ``ATEN_CPU_CAPABILITY=avx2``
* XLA (Keras 3 compiles its train step with XLA): ``--xla_cpu_max_isa=AVX2`` in ``XLA_FLAGS``
* NumPy's BLAS (OpenBLAS): ``OPENBLAS_CORETYPE=Haswell``; MKL: ``MKL_ENABLE_INSTRUCTIONS=AVX2``
* NumPy's own loops: ``NPY_DISABLE_CPU_FEATURES`` lists the AVX-512 features the CPU has

A held run is an imitation: the caches, memory and clock are still this CPU's. Reports say which
class a number belongs to, and whether it was native or held.

``probe`` (run in a contender's environment) reports what the libraries actually use: oneDNN's
ISA line and kernel names from its verbose output, ATen's capability, XLA's LLVM target features,
OpenBLAS's kernel.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

CLASSES = ("native", "avx2")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def hardware_isa(flags: set[str] | None = None) -> str:
    """The widest vector ISA the CPU has, in the words the reports use."""
    flags = cpu_flags() if flags is None else flags
    if "amx_tile" in flags:
        return "AMX + AVX-512" + (" BF16" if "avx512_bf16" in flags else "")
    if "avx512f" in flags:
        return "AVX-512" + (" BF16" if "avx512_bf16" in flags else "")
    if "avx2" in flags:
        return "AVX2"
    return "SSE (no AVX2)"


def _numpy_wider_targets() -> list[str]:
    """NumPy's dispatch targets above AVX2 (names differ between NumPy versions)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:
        return []
    return [t for t in __cpu_dispatch__ if "512" in t or t == "X86_V4"]


def class_env(cpu_class: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a contender process for ``cpu_class`` (a copy of ``base``)."""
    if cpu_class not in CLASSES:
        raise ValueError(f"unknown CPU class {cpu_class!r}; choose one of: {', '.join(CLASSES)}")
    env = dict(os.environ if base is None else base)
    if cpu_class == "native":
        return env
    flags = cpu_flags()
    if "avx2" not in flags:
        raise SystemExit("--cpu-class avx2: this CPU has no AVX2; run with --cpu-class native")
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    env["ATEN_CPU_CAPABILITY"] = "avx2"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()
    env["OPENBLAS_CORETYPE"] = "Haswell"
    env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
    wider = _numpy_wider_targets()
    if wider:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(wider)
    return env


def allowed(cpu_class: str) -> str:
    """What a run of ``cpu_class`` allows, in words; a cap set by hand in the environment is named."""
    if cpu_class == "avx2":
        return "held to AVX2"
    capped = [f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
              if name in os.environ]
    return f"native, but {' '.join(capped)} in the environment" if capped else "native"


def header(cpu_class: str) -> str:
    """One line for the top of a report: CPU model, what it has, what this run allows."""
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        load = ""
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, has {hardware_isa()}; "
        f"this run: {allowed(cpu_class)}{load}"
    )


def class_line(cpu_class: str) -> str:
    """One line for under a report's table: the class its numbers belong to."""
    return f"CPU class: {cpu_class} ({allowed(cpu_class)}) on {cpu_model()} ({hardware_isa()})"


# ----------------------------------------------------------------------------- what is actually used


def _onednn_lines(text: str) -> tuple[str, list[str]]:
    isa = ""
    impls: list[str] = []
    for line in text.splitlines():
        if "onednn_verbose" not in line:
            continue
        m = re.search(r"isa:([^,]+)", line)
        if m and not isa:
            isa = m.group(1).strip()
        parts = line.split(",")
        if "exec" in parts and "convolution" in parts:
            impl = parts[parts.index("convolution") + 1]
            if impl not in impls:
                impls.append(impl)
    return isa, impls


def _probe_torch() -> str:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    net(torch.rand(4, 1, 12, 12)).sum().backward()
    return f"ATen {torch.backends.cpu.get_cpu_capability()}"


def _probe_keras() -> str:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    model = keras.Sequential(
        [keras.Input((12, 12, 1)), keras.layers.Conv2D(8, 3), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile(optimizer="rmsprop", loss="mse")
    import numpy as np

    model.train_on_batch(np.zeros((4, 12, 12, 1), "float32"), np.zeros((4, 2), "float32"))
    return f"Keras jit_compile={model.jit_compile}"


def _probe_numpy() -> str:
    import numpy as np

    try:
        from threadpoolctl import threadpool_info

        blas = "; ".join(
            f"{i.get('internal_api')} {i.get('architecture')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        blas = "?"
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    loops = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    return f"BLAS {blas}; NumPy {np.__version__} loops dispatch to {', '.join(loops) or 'baseline'}"


def _xla_features(dump: str) -> str:
    """The widest vector extension XLA's compiled code was allowed (its LLVM target features)."""
    seen: set[str] = set()
    for root, _dirs, files in os.walk(dump):
        for name in files:
            if name.endswith(".ll"):
                with open(os.path.join(root, name), errors="replace") as fh:
                    for m in re.finditer(r'"target-features"="([^"]*)"', fh.read()):
                        seen.update(f for f in m.group(1).split(",") if f.startswith("+"))
    if not seen:
        return "XLA: no compiled code seen"
    if "+amx-tile" in seen:
        return "XLA code AMX"
    if "+avx512f" in seen:
        return "XLA code AVX-512"
    if "+avx2" in seen:
        return "XLA code AVX2"
    return "XLA code " + ("AVX" if "+avx" in seen else "SSE")


def probe(kind: str, cpu_class: str, python: str | None = None) -> str:
    """What ``kind`` (torch | keras | numpy) actually runs with under ``cpu_class``, in one line."""
    import tempfile

    env = class_env(cpu_class)
    env["ONEDNN_VERBOSE"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with tempfile.TemporaryDirectory() as dump:
        if kind == "keras":
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} --xla_dump_hlo_as_text"
            ).strip()
        proc = subprocess.run(
            [python or sys.executable, os.path.abspath(__file__), "--probe", kind],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        xla = _xla_features(dump) if kind == "keras" else ""
    if proc.returncode != 0:
        return f"probe failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    said = proc.stdout.strip().splitlines()[-1]
    isa, impls = _onednn_lines(proc.stdout + proc.stderr)
    parts = [said]
    if isa:
        parts.append(f"oneDNN {isa}" + (f" (conv kernels {', '.join(impls)})" if impls else ""))
    elif kind != "numpy":
        parts.append("oneDNN not used")
    if xla:
        parts.append(xla)
    return "; ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        print(
            {"torch": _probe_torch, "keras": _probe_keras, "numpy": _probe_numpy}[sys.argv[2]](), flush=True
        )
    else:
        for cls in CLASSES:
            print(header(cls))
            for kind in ("torch", "numpy", "keras"):
                print(f"  {kind}: {probe(kind, cls)}")
