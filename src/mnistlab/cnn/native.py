"""Small C kernels of the CNN's CPU levers (``kernels.c`` next to this file: the one-pass first
block of pooled_conv.py, the bf16 pooling and ReLU of pool_relu.py, the Winograd transforms of
winograd.py, the RMSprop update of optim.py), compiled on first use with the system's C compiler
(``$CC``, else ``cc``) for the vector ISA torch itself runs at (``ATEN_CPU_CAPABILITY`` holds it),
and cached under ``$MNISTLAB_HOME/kernels``.

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


SOURCE = Path(__file__).with_name("kernels.c")
_DECLARED = {  # function: (data pointers, int64 sizes)
    "pooled_conv_forward": (5, 7), "pooled_conv_backward": (6, 7),
    "winograd_input": (3, 7), "winograd_input_backward": (3, 7),
    "winograd_output": (5, 8), "winograd_output_backward": (4, 8),
    "pool_relu_bf16_forward": (3, 6), "pool_relu_bf16_backward": (4, 6),
}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels compiled for the ISA torch runs at (built and cached on first use), or None
    when they cannot be built here."""
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None or not SOURCE.exists():
        return None
    isa = _FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])
    flags = ["-O3", "-fPIC", "-shared", "-fno-fast-math", "-fno-math-errno", *isa]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), version, *flags]).encode()).hexdigest()[:16]
    from ..data.sources import home_dir

    target = home_dir() / "kernels" / f"kernels-{digest}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kernels.", suffix=".so", dir=target.parent)
            os.close(fd)
            command = [compiler, *flags, str(SOURCE), "-o", tmp]
            done = subprocess.run(command, capture_output=True, timeout=120)
            if done.returncode != 0:
                Path(tmp).unlink(missing_ok=True)
                return None
            os.replace(tmp, target)  # another process building the same file: either copy will do
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    for function, (pointers, sizes) in _DECLARED.items():
        kernel = getattr(lib, function)
        kernel.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * sizes
        kernel.restype = None
    # count, then arrays of pointers (three) and of sizes, then float scalars
    lib.rmsprop_state.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_float] * 3
    lib.rmsprop_params.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_float]
    lib.rmsprop_state.restype = lib.rmsprop_params.restype = None
    return lib


def call(kernel: str, *args: torch.Tensor | int) -> None:
    """Run ``kernel`` with each tensor passed as its data pointer. ``args`` references the tensors
    until the kernel returns: a temporary's pointer taken alone (``t.contiguous().data_ptr()``) can
    point into memory already freed when the kernel reads it."""
    getattr(library(), kernel)(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args))


def built() -> str:
    """The kernels' file name here (the source, compiler and flags hashed), or "" where none can
    be built: what a recorded choice of levers was measured with."""
    lib = library()
    return Path(lib._name).stem if lib is not None else ""
