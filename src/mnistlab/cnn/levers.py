"""How a CNN run goes fast: the device, the speed levers chosen for it, and the process-wide
settings a run changes.

* ``choose_device`` and ``choose_levers`` decide and change nothing; on the CPU, what 'auto' leaves
  open is timed on a copy of the network (``cpu_probe``, torch's thread count and random stream
  restored). ``Levers`` records what was decided and measured; the manifest stores it.
* ``SplitBatch`` (CPU) and ``CudaGraphStep`` (GPU) are the levers that change how a step runs;
  the loop in training.py calls them.
* ``process_settings`` is the one place where a run changes the process: every such setting is
  listed there, applied when ``Trainer.run`` starts and undone when it ends where that is possible.
"""

from __future__ import annotations

import collections
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import ConfigError
from ..mlp.threads import auto_threads as all_cores
from . import cpu_probe, native
from .config import DEVICES, TrainConfig
from .spec import Spec

# ----------------------------------------------------------------------------------------------
# Choosing


def cpu_bf16_supported() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX) that oneDNN and ATen may use (cpu_probe.bf16_allowed)."""
    return cpu_probe.bf16_allowed()


def auto_threads() -> int:
    """torch's default thread count, within the cores this process may use. Whether they pay (other
    processes may hold them: OpenMP's barriers then stall) is measured by cpu_probe, not guessed."""
    return min(torch.get_num_threads(), all_cores())


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: CUDA is not available here (CPU-only torch or no GPU); use --device cpu or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    return torch.device(name)


@dataclass
class Levers:
    """What the run actually used after 'auto' was resolved (recorded in the manifest)."""

    device: str
    amp_dtype: str | None  # "bfloat16" / "float16" / None
    channels_last: bool
    compile: bool
    cuda_graphs: bool
    threads: int
    reuse_freed_memory: bool = False
    # CPU: each batch split into this many parts, each on a thread of its own with one torch thread
    # (with fewer threads than parts: one after another, the same arithmetic)
    data_parallel: int = 1
    measured: str = ""  # CPU: what cpu_probe timed for the choices 'auto' left open
    world_size: int = 1  # processes training together (torchrun, DDP; cnn/distributed.py)
    winograd: dict[str, int] = field(default_factory=dict)  # CPU: blocks run as Winograd F(m x m, 3 x 3)
    pooled_conv: list[str] = field(default_factory=list)  # CPU: blocks run as one pooled_conv kernel
    pool_relu: list[str] = field(default_factory=list)  # CPU, bf16: blocks pooled and rectified by pool_relu

    @property
    def step_threads(self) -> int:
        """torch threads while a step runs: with the batch split, the parts share the threads out."""
        return max(1, self.threads // self.data_parallel)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.amp_dtype or "")


def choose_levers(config: TrainConfig, device: torch.device, spec: Spec,
                  recorded: dict[str, Any] | None = None, *, split_batch: bool = True) -> Levers:
    """``recorded``: the levers a run recorded (its manifest's), when it resumes with the same
    how-options: the choices that change the arithmetic are taken from it, not measured again.
    ``split_batch=False``: no thread split (a rank of a distributed job: DDP splits the batch)."""
    kind = device.type
    amp: str | None = None
    if kind == "cuda":
        # bf16 needs no loss scaling, so the whole step stays capturable; GPUs without bf16 train in float32.
        if config.amp != "off" and torch.cuda.is_bf16_supported():
            amp = "bfloat16"
    elif kind == "cpu":
        # bf16 autocast pays off only where oneDNN has native bf16 kernels (AVX512-BF16 / AMX);
        # elsewhere it emulates them and is slower than float32, so 'auto' falls back.
        if config.amp == "on" or (config.amp == "auto" and cpu_bf16_supported()):
            amp = "bfloat16"
    # CPU float32: channels-last first (it skips oneDNN's reorders), then measured against NCHW
    channels_last = config.channels_last == "on" or (
        config.channels_last == "auto" and (kind == "cpu" or (kind == "cuda" and amp is not None))
    )
    graphs = kind == "cuda" and config.cuda_graphs != "off" and not config.compile
    threads = config.threads or (auto_threads() if kind == "cpu" else torch.get_num_threads())
    # At batch 64 torch's own threads barely pay on the CPU; splitting the batch does (SplitBatch,
    # docs/performance.md) where every kind gives the same result on a split batch.
    parallel = 1
    if kind == "cpu" and threads > 1 and not config.compile and split_batch:
        if all(layer.kind.batch_split_exact for layer in spec.layers):
            parallel = max(1, min(threads, config.batch_size // 16))  # parts under 16 images run slowly
    measured, fast, one_pass, pool_relu = "", {}, [], []
    if recorded is not None and (recorded.get("device"), recorded.get("amp_dtype")) != (kind, amp):
        recorded = None  # recorded elsewhere (another device, or another arithmetic)
    if kind == "cpu" and not config.compile:
        default = cpu_probe.Candidate(channels_last, threads, parallel)
        setup = _measure_cpu(config, spec, amp, default, recorded)
        chosen, measured = setup.chosen, setup.note
        channels_last, threads, parallel = chosen.channels_last, chosen.threads, chosen.parts
        fast, one_pass, pool_relu = dict(chosen.winograd), list(chosen.pooled), list(chosen.pool_relu)
    return Levers(
        kind, amp, channels_last, bool(config.compile), graphs, threads, kind == "cpu" and _glibc(), parallel,
        measured, winograd=fast, pooled_conv=one_pass, pool_relu=pool_relu,
    )


@dataclass
class _Setup:
    chosen: cpu_probe.Candidate
    note: str = ""


def _measure_cpu(config: TrainConfig, spec: Spec, amp: str | None, default: cpu_probe.Candidate,
                 recorded: dict[str, Any] | None) -> _Setup:
    """What 'auto' leaves open on the CPU, timed on this network (cpu_probe), in two parts.

    * The arithmetic (``_arithmetic``): in float32 the layout and Winograd for the 3x3
      convolutions, and (also under bf16 autocast) the one-pass first block (pooled_conv); under
      bf16 autocast the one-pass pooling and ReLU (pool_relu, exact). Each rounds differently, so
      it is measured once per machine, network and batch and recorded; a resumed run keeps its own.
    * Without --threads: the parts of the split batch on all cores against one after another on
      one thread (other processes may hold the cores). The arithmetic is the same either way, so
      this is measured afresh by every run.

    The default comes first and keeps a near-tie."""
    from .model import Net

    dtype = {"bfloat16": torch.bfloat16}.get(amp or "")
    split_timed = not config.threads and default.threads > 1
    net = None
    if recorded is None or split_timed:  # a recorded arithmetic with --threads times nothing
        # the probe's network must not draw from the run's random stream
        with torch.random.fork_rng(devices=[]):
            net = Net(spec)
    parts = default.parts
    if recorded is not None:
        parts = int(recorded.get("data_parallel", parts))
        fast = tuple(sorted((str(k), int(v)) for k, v in recorded.get("winograd", {}).items()))
        one_pass = tuple(sorted(str(name) for name in recorded.get("pooled_conv", [])))
        relu_pools = tuple(sorted(str(name) for name in recorded.get("pool_relu", [])))
        choice = (bool(recorded["channels_last"]), fast, one_pass, relu_pools)
        notes = ["arithmetic as recorded by the run"]
    else:
        choice, notes = _arithmetic(config, spec, net, dtype, replace(default, parts=parts))
    chosen = cpu_probe.Candidate(choice[0], default.threads, parts, *choice[1:])
    if split_timed:
        # one thread keeps the partition (serial parts) so that the arithmetic does not change
        alone = cpu_probe.Candidate(choice[0], 1, parts, *choice[1:])
        result = cpu_probe.probe(net, spec.input_shape, config.batch_size, [chosen, alone], autocast=dtype)
        chosen = result.chosen
        notes.append(result.describe())
    return _Setup(chosen, "; ".join(notes))


def _arithmetic(config: TrainConfig, spec: Spec, net: Any, dtype: torch.dtype | None,
                default: cpu_probe.Candidate) -> tuple[tuple[bool, tuple, tuple, tuple], list[str]]:
    """(channels-last?, Winograd blocks, one-pass conv+pool blocks, one-pass pool+ReLU blocks) for
    this CPU and autocast:
    recorded on this machine, or measured and recorded. Each block's faster algorithm is first
    timed alone in the network; those that paid are then timed together and one by one against
    the plain network (and NCHW)."""
    layouts = [default.channels_last] + ([False] if config.channels_last == "auto" and dtype is None else [])
    plan = net.winograd_plan() if dtype is None and default.channels_last else {}
    # the one-pass first block computes in float32 also under bf16 autocast: a candidate there too
    pooled = net.pooled_conv_plan() if default.channels_last else []
    relu_pools = net.pool_relu_plan() if dtype == torch.bfloat16 and default.channels_last else []
    if len(layouts) == 1 and not plan and not pooled and not relu_pools:
        return (default.channels_last, (), (), ()), []
    key = {"spec": spec.to_string(), "batch": config.batch_size, "parts": default.parts,
           "autocast": str(dtype), "layouts": layouts, "winograd": sorted(plan.items())}
    if pooled:
        key["pooled_conv"] = pooled
    if relu_pools:
        key["pool_relu"] = relu_pools
    if plan or pooled or relu_pools:  # a choice measured with other kernels (or none) is measured again
        key["kernels"] = native.built()
    stored = _stored_choice(cpu_probe.recorded_choice(key), layouts, plan, pooled, relu_pools)
    if stored is not None:
        where = f"arithmetic as recorded on this machine ({cpu_probe.record_path()})"
        return stored[0], [f"{where}: {stored[1]}"]

    def candidate(channels_last: bool, chosen: tuple = ()) -> cpu_probe.Candidate:
        one_pass = {item[1] for item in chosen if item[0] == "pooled"}  # its pooling included
        return replace(default, channels_last=channels_last,
                       winograd=tuple(sorted(item[1:] for item in chosen if item[0] == "winograd")),
                       pooled=tuple(sorted(one_pass)),
                       pool_relu=tuple(sorted(item[1] for item in chosen
                                              if item[0] == "pool_relu" and item[1] not in one_pass)))

    def timed(candidates: list[cpu_probe.Candidate]) -> cpu_probe.ProbeResult:
        # the same threads throughout: what differs is the work, so CPU time compares them
        return cpu_probe.probe(net, spec.input_shape, config.batch_size, candidates, autocast=dtype,
                               rounds=5, work=True)

    notes = []
    every = [("winograd", name, m) for name, m in sorted(plan.items())]
    every += [("pooled", name) for name in pooled] + [("pool_relu", name) for name in relu_pools]
    fast = every
    if len(every) > 1:
        alone = timed([candidate(True)] + [candidate(True, (item,)) for item in every])
        plain = alone.ms_per_step[candidate(True)]
        fast = [item for item in every if alone.ms_per_step[candidate(True, (item,))] < 0.98 * plain]
        notes.append("each block alone: " + alone.describe())
    options = [candidate(default.channels_last)]
    if every:
        # all of them again next to those that paid alone: one preempted timing must not drop a block
        options += [candidate(True, tuple(every)), candidate(True, tuple(fast))]
        if len(fast) > 1:
            options += [candidate(True, (item,)) for item in fast]
    if len(layouts) > 1:
        options.append(candidate(False))
    result = timed(list(dict.fromkeys(options)))
    chosen = result.chosen
    choice = (chosen.channels_last, chosen.winograd, chosen.pooled, chosen.pool_relu)
    notes.append(result.describe())
    cpu_probe.record_choice(key, {"channels_last": choice[0], "winograd": [list(p) for p in choice[1]],
                                  "pooled_conv": list(choice[2]), "pool_relu": list(choice[3]),
                                  "measured": "; ".join(notes)})
    return choice, notes


def _stored_choice(stored: dict | None, layouts: list[bool], plan: dict[str, int],
                   pooled: list[str], relu_pools: list[str]) -> tuple | None:
    """A recorded choice that is still one of this run's options, as ((layout, Winograd, one-pass
    conv+pool blocks, one-pass pool+ReLU blocks), note)."""
    pairs = stored.get("winograd") if stored is not None else None
    if stored is None or stored.get("channels_last") not in layouts or not isinstance(pairs, list):
        return None
    if not all(isinstance(p, list) and len(p) == 2 and plan.get(p[0]) == p[1] for p in pairs):
        return None
    names, relu_names = stored.get("pooled_conv", []), stored.get("pool_relu", [])
    if not isinstance(names, list) or not set(names) <= set(pooled):
        return None
    if not isinstance(relu_names, list) or not set(relu_names) <= set(relu_pools):
        return None
    fast = tuple((str(name), int(m)) for name, m in pairs)
    choice = (bool(stored["channels_last"]), fast, tuple(map(str, names)), tuple(map(str, relu_names)))
    return choice, stored.get("measured", "")


# ----------------------------------------------------------------------------------------------
# Levers that change how a step runs


class SplitBatch:
    """CPU: a batch split into parts, each part's forward and backward on its own thread (torch
    releases the GIL inside operations), one torch thread per part.

    ``part`` returns (gradients, loss sum, correct count) for one part with its loss scaled by its
    share of the batch, so the summed gradients are the whole batch's. They are summed in part
    order, never in the order the threads finish, so a run is reproducible and resumable bit for bit.

    Whether the parts run together or one after another on the calling thread changes nothing in
    the arithmetic, so with threads enough ``PartsTogether`` decides it step by step from the
    steps' own times: on idle cores together, while other processes hold a core one after another.
    """

    def __init__(self, parts: int, threads: int | None = None, *, together: bool = True):
        """``threads``: the threads the parts may use; ``together``: how the first steps run."""
        self.parts = parts
        # with fewer threads than parts the parts run one after another: the same arithmetic
        self.concurrent = threads is None or threads >= parts
        # None: always as ``concurrent`` says
        self.choice = PartsTogether(together) if self.concurrent else None
        self._pool: Any = None  # created at the first step, shut down by close()

    def run(
        self,
        part: Callable[..., tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """The whole batch's gradients, and each part's (loss sum, correct count) in part order."""
        xs, ys = x.tensor_split(self.parts), y.tensor_split(self.parts)
        together = self.concurrent if self.choice is None else self.choice.together()
        start = time.perf_counter()
        if together:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(len(xs) - 1, thread_name_prefix="mnistlab-part")
            others = [self._pool.submit(part, xs[k], ys[k], len(y)) for k in range(1, len(xs))]
            results = [part(xs[0], ys[0], len(y))] + [f.result() for f in others]
        else:
            results = [part(xp, yp, len(y)) for xp, yp in zip(xs, ys)]
        if self.choice is not None:
            self.choice.record(time.perf_counter() - start)
        with torch.no_grad():
            grads = results[0][0]
            for more, _, _ in results[1:]:
                torch._foreach_add_(grads, more)
        return grads, [(loss_sum, correct) for _, loss_sum, correct in results]

    def close(self) -> None:
        """No idle threads left behind by a finished run."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class PartsTogether:
    """Whether a split batch's parts run together on their threads or one after another, decided by
    the wall time of the steps themselves. A part's thread needs a core of its own: on a machine
    where another process holds one, the scheduler puts both parts on the other core, and together
    they take longer than one after another (docs/performance.md). The steps start the way the
    caller says (the CPU probe's choice under ``--threads auto``, else together); every
    ``interval`` steps a short trial of the other way is compared with the recent steps (medians),
    and the faster way is kept. A trial that loses by far doubles the interval (up to
    ``LONGEST``), so on idle cores the trials cost little; a switch shortens it again."""

    FIRST = 256  # steps before the first trial
    SHORTEST, LONGEST = 64, 1024
    TRIAL = 4  # steps of a trial
    RECENT = 16  # steps of the current way a trial is compared with
    SWITCH = 0.95  # the other way must take at most this share of the current way's time
    FAR = 1.3  # a trial slower by this factor is lost by far

    def __init__(self, together: bool = True) -> None:
        self.current = together  # the way the steps run between trials: the parts together or not
        self.recent: collections.deque[float] = collections.deque(maxlen=self.RECENT)
        self.trial: list[float] = []
        self.trying = False
        self.interval = self.FIRST
        self.until_trial = self.FIRST
        self.steps = {True: 0, False: 0}  # steps run each way (together, one after another)
        self.switches = 0

    def together(self) -> bool:
        """How the next step runs."""
        return self.current != self.trying

    def record(self, seconds: float) -> None:
        """The wall time of the step just run the way ``together()`` said."""
        self.steps[self.together()] += 1
        if self.trying:
            self.trial.append(seconds)
            if len(self.trial) >= self.TRIAL:
                self._decide()
            return
        self.recent.append(seconds)
        self.until_trial -= 1
        if self.until_trial <= 0 and len(self.recent) >= self.TRIAL:
            self.trying, self.trial = True, []

    def _decide(self) -> None:
        other, current = statistics.median(self.trial), statistics.median(self.recent)
        if other <= self.SWITCH * current:
            self.current = not self.current
            self.recent = collections.deque(self.trial, maxlen=self.RECENT)
            self.interval = self.SHORTEST
            self.switches += 1
        elif other >= self.FAR * current:
            self.interval = min(2 * self.interval, self.LONGEST)
        else:
            self.interval = self.SHORTEST
        self.trying, self.trial = False, []
        self.until_trial = self.interval


class CudaGraphStep:
    """GPU: one full training step recorded as a CUDA graph after a few warm-up steps, then
    replayed for every full batch (no per-kernel launch cost). The step must read its batch
    indices from ``static_idx`` and accumulate into tensors that outlive the capture."""

    WARMUP_STEPS = 3

    def __init__(self, device: torch.device):
        self.device = device
        self.graph: Any = None
        self.static_idx: torch.Tensor | None = None

    def warm_up(self, step: Callable[[], None]) -> None:
        """A step before capture, on a side stream as CUDA graph capture requires."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, batch_size: int, step: Callable[[torch.Tensor], None]) -> None:
        self.static_idx = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step(self.static_idx)

    def replay(self, idx: torch.Tensor) -> None:
        self.static_idx.copy_(idx)  # type: ignore[union-attr]  # capture() came first
        self.graph.replay()


# ----------------------------------------------------------------------------------------------
# Process-wide settings: all of them, here


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count is process-wide: set it inside the block, restore it after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def process_settings(levers: Levers) -> Iterator[None]:
    """The process-wide settings a run needs, for the length of the block (``Trainer.run``).

    * torch's thread count: the steps' share (``step_threads``); restored afterwards.
    * cuDNN's autotuner on CUDA (fixed shapes: it picks its fastest kernels once); restored afterwards.
    * glibc's malloc thresholds on CPU (``keep_freed_memory``): kept for the rest of the process,
      because glibc has no way to read back its adaptive thresholds to restore them.

    Two more belong to the loop rather than to speed, and are scoped there: the SIGINT/SIGTERM
    handlers (``stop.StopRequest``, restored when the loop ends) and torch's global random
    generator, seeded by the Trainer (the run's random stream; checkpoints save and restore it).
    """
    if levers.reuse_freed_memory:
        levers.reuse_freed_memory = keep_freed_memory()  # recorded as applied or not
    cudnn_before = torch.backends.cudnn.benchmark
    if levers.device == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with torch_threads(levers.step_threads if levers.device == "cpu" else None):
            yield
    finally:
        torch.backends.cudnn.benchmark = cudnn_before


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_freed_memory_kept = False


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Every CPU step allocates and frees the same multi-megabyte tensors; by default glibc serves
    blocks that large with mmap and unmaps them on free, so each step page-faults them in again
    (TensorFlow keeps its own pool, PyTorch on CPU does not). Raising the mmap and trim thresholds
    keeps them in the heap (docs/performance.md); the process keeps its peak memory instead.
    Process-wide and for the rest of the process; glibc only (elsewhere, or if the call fails,
    nothing changes). Returns whether it applied.
    """
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if not _glibc():
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
        )
    except (OSError, AttributeError):
        return False
    _freed_memory_kept = bool(ok)
    return _freed_memory_kept
