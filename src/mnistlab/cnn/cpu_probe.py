"""CPU levers decided by measurement: what the CPU may run, and which layout, convolution
algorithm and thread setup is fastest for this network on it.

* ``bf16_allowed`` reads what the CPU has *and* what oneDNN and ATen are allowed to use
  (``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` can hold an AVX-512 CPU to AVX2; bf16 is then
  emulated, many times slower than float32).
* ``probe`` times a few forward + backward passes of the network on synthetic data for each
  candidate (memory layout; Winograd for the 3x3 convolutions; the parts of a split batch on
  threads of their own or one after another) and returns the fastest. On AVX2 float32 the
  channels-last layout avoids oneDNN's reorders and runs ATen's vectorized pooling; a split batch
  pays on idle cores and loses when other processes hold them. These depend on the CPU and on what
  else runs on it, so they are measured, not assumed. The timings are interleaved and each
  candidate's median is kept, so one preempted pass decides nothing.
* ``recorded_choice`` / ``record_choice``: the choices that change the arithmetic (layout,
  Winograd) are measured once per machine and kept in ``$MNISTLAB_HOME/cpu-probe.json``, so the
  same command with the same seed trains the same weights on every run (docs/cnn.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..safe_write import atomic_write_bytes
from .model import channels_last_strides

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) whose instructions include native bf16 arithmetic
_BF16_ISAS = ("BF16", "FP16", "AMX", "AVX10", "ALL")


def bf16_allowed() -> bool:
    """Native bf16 (AVX512-BF16 or AMX) on this CPU, and oneDNN and ATen allowed to use it."""
    try:
        caps = torch._C._cpu._get_cpu_capability()
        has = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except (AttributeError, RuntimeError):
        try:
            has = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except (AttributeError, RuntimeError):
            has = False
    if not has or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return any(name in limit for name in _BF16_ISAS)


@dataclass(frozen=True)
class Candidate:
    channels_last: bool
    threads: int  # torch threads in all
    parts: int  # the batch split into this many parts (1: not split), each on its own thread if
    # there are threads enough, else one after another on one thread (the same arithmetic)
    winograd: tuple[tuple[str, int], ...] = ()  # blocks run as Winograd F(m x m, 3 x 3): (name, m)
    pooled: tuple[str, ...] = ()  # blocks run as one pooled_conv kernel
    pool_relu: tuple[str, ...] = ()  # blocks whose pooling and ReLU run as one pool_relu kernel (bf16)

    @property
    def concurrent(self) -> bool:
        return self.threads >= self.parts

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "NCHW"
        if self.parts > 1:
            how = (f"batch split across {self.parts} threads" if self.concurrent
                   else f"batch in {self.parts} parts on {self.threads} thread(s)")
        else:
            how = f"{self.threads} thread(s)"
        fast = "".join(f", {name} Winograd F({m}x{m},3x3)" for name, m in self.winograd)
        fast += "".join(f", {name} one-pass conv+pool" for name in self.pooled)
        fast += "".join(f", {name} one-pass pool+ReLU" for name in self.pool_relu)
        return f"{layout}{fast}, {how}"


@dataclass
class ProbeResult:
    chosen: Candidate
    ms_per_step: dict[Candidate, float] = field(default_factory=dict)

    work: bool = False  # ms of CPU time (all threads), not of wall time

    def describe(self) -> str:
        unit = "ms CPU" if self.work else "ms"
        return "; ".join(f"{c.describe()}: {ms:.1f} {unit}" for c, ms in self.ms_per_step.items())


_cache: dict[tuple, ProbeResult] = {}


def probe(
    net: torch.nn.Module,
    input_shape: Sequence[int],
    batch: int,
    candidates: Sequence[Candidate],
    autocast: torch.dtype | None = None,
    rounds: int = 3,
    steps: int = 3,
    work: bool = False,
) -> ProbeResult:
    """The fastest of ``candidates`` for a forward + backward pass of ``net`` at ``batch`` (a copy
    of it: the run's network and random stream are untouched). Results are kept per process for
    the same network shape, batch and candidates. ``work``: compare the process's CPU time instead
    of wall time, for candidates that differ only in the arithmetic (same threads), whose work
    is what differs: CPU time hardly moves when other processes take turns on the cores."""
    candidates = list(dict.fromkeys(candidates))
    if len(candidates) == 1:
        return ProbeResult(candidates[0])
    key = (
        repr(net),
        tuple(input_shape),
        batch,
        tuple(candidates),
        autocast,
        work,
        os.environ.get("ONEDNN_MAX_CPU_ISA"),
        torch.backends.cpu.get_cpu_capability(),
    )
    if key in _cache:
        return _cache[key]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=generator)
    y = torch.randint(0, 2, (batch,), generator=generator)
    nets = {}
    for layout in {c.channels_last for c in candidates}:
        clone = copy.deepcopy(net).train()
        nets[layout] = clone.to(memory_format=torch.channels_last) if layout else clone
    clock = time.process_time if work else time.perf_counter
    threads_before = torch.get_num_threads()
    pool = ThreadPoolExecutor(max(c.parts for c in candidates) - 1 or 1, thread_name_prefix="mnistlab-probe")
    times: dict[Candidate, list[float]] = {c: [] for c in candidates}
    try:
        for round_ in range(rounds + 1):  # the first round warms each candidate up, untimed
            for cand in candidates:
                torch.set_num_threads(max(1, cand.threads // cand.parts))
                xs = channels_last_strides(x) if cand.channels_last else x
                clone = nets[cand.channels_last]
                clone.winograd = dict(cand.winograd)
                clone.pooled_conv = set(cand.pooled)
                clone.pool_relu = set(cand.pool_relu)
                for _ in range(steps):
                    t0 = clock()
                    _pass(clone, xs, y, cand.parts, autocast, pool if cand.concurrent else None)
                    if round_:
                        times[cand].append(clock() - t0)
    finally:
        torch.set_num_threads(threads_before)
        pool.shutdown()
    ms = {c: 1000 * statistics.median(t) for c, t in times.items()}
    best = min(ms.values())
    # near-ties go to the earlier candidate (the caller lists its default first)
    chosen = next(c for c in candidates if ms[c] <= 1.03 * best)
    result = ProbeResult(chosen, ms, work)
    _cache[key] = result
    return result


def _pass(net, x, y, parts, autocast, pool) -> None:
    def part(xp, yp):
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            logits = net(xp)
        loss = F.cross_entropy(logits.float()[:, :2], yp)
        torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])

    if parts == 1:
        part(x, y)
        return
    xs, ys = x.tensor_split(parts), y.tensor_split(parts)
    if pool is None:  # the parts one after another
        for xp, yp in zip(xs, ys):
            part(xp, yp)
        return
    others = [pool.submit(part, xs[k], ys[k]) for k in range(1, parts)]
    part(xs[0], ys[0])
    for f in others:
        f.result()


# ----------------------------------------------------------------------------------------------
# The per-machine record of choices that change the arithmetic

RECORD = "cpu-probe.json"


def machine() -> dict[str, str]:
    """What a recorded choice depends on besides the network: the CPU, what oneDNN, ATen and MKL may
    use on it (``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` / ``MKL_ENABLE_INSTRUCTIONS`` hold
    it), and the torch build."""
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "",
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""),  # the Winograd products' GEMMs
        "torch": torch.__version__,
    }


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name; it cannot change while the process runs, so it is read once."""
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    return model


def record_path() -> Path:
    from ..data.sources import home_dir

    return home_dir() / RECORD


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or unreadable: measured afresh and rewritten
    return data if isinstance(data, dict) else {}


def recorded_choice(key: dict) -> dict | None:
    """The choice recorded on this machine for ``key`` (with ``machine()``), or None."""
    entry = _read_record(record_path()).get(_key_text(key))
    return entry if isinstance(entry, dict) else None


def record_choice(key: dict, choice: dict) -> bool:
    """Add ``choice`` under ``key`` to this machine's record, atomically (a reader sees the old
    file or the new one). Returns whether it was written; a cache that cannot be written is no error."""
    path = record_path()
    try:
        data = _read_record(path)
        data[_key_text(key)] = choice
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    except OSError:
        return False
    return True


def _key_text(key: dict) -> str:
    return json.dumps({**machine(), **key}, sort_keys=True)
