"""Small C kernels of the CNN's CPU levers (``pooled_conv.c``, ``winograd.c`` next to this file),
compiled on first use with the system's C compiler (``$CC``, else ``cc``) for the vector ISA torch
itself runs at (``ATEN_CPU_CAPABILITY`` holds it), and cached under ``$MNISTLAB_HOME/kernels``.

Where they pay is measured (cpu_probe), never assumed; without a compiler ``library`` returns None
and the levers that need a kernel are simply not offered. Kernels run on one thread, in a fixed
order of sums, so results repeat bit for bit; ctypes releases the GIL while they run, so the
parts of a split batch run them side by side.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

LANES = 8  # channels per vector block in the kernels: channel counts must be multiples of it
_FLAGS = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"]}


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The kernel ``name``.c compiled for the ISA torch runs at (built and cached on first use),
    or None when it cannot be built here."""
    source = Path(__file__).with_name(f"{name}.c")
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None or not source.exists():
        return None
    isa = _FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])
    flags = ["-O3", "-fPIC", "-shared", "-fno-fast-math", *isa]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    digest = hashlib.sha256("\0".join([source.read_text(), version, *flags]).encode()).hexdigest()[:16]
    from ..data.sources import home_dir

    target = home_dir() / "kernels" / f"{name}-{digest}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".so", dir=target.parent)
            os.close(fd)
            command = [compiler, *flags, str(source), "-o", tmp]
            done = subprocess.run(command, capture_output=True, timeout=120)
            if done.returncode != 0:
                Path(tmp).unlink(missing_ok=True)
                return None
            os.replace(tmp, target)  # another process building the same file: either copy will do
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError:
        return None


def declare(lib: ctypes.CDLL, function: str, pointers: int, sizes: int) -> None:
    """Argument types of a kernel: ``pointers`` data pointers, then ``sizes`` int64 sizes."""
    fn = getattr(lib, function)
    fn.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * sizes
    fn.restype = None


KERNELS = ("pooled_conv", "winograd")


def built() -> list[str]:
    """The kernels built here, each as its file's name (the source, compiler and flags hashed):
    what a recorded choice of levers was measured with."""
    names = []
    for name in KERNELS:
        lib = library(name)
        if lib is not None:
            names.append(Path(lib._name).stem)
    return names
