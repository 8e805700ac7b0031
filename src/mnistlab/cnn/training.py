"""Training: data resident on the device, batches by index permutation, checkpoints, resume.

The run directory is rewritten atomically at the start (initial weights), after every epoch, and
when training stops early (Ctrl-C / SIGTERM after the current step, or a NaN loss, which keeps the
last good epoch). ``checkpoint.npz`` holds everything needed to continue exactly where it stopped:
model, optimizer and schedule state, the position inside the epoch and the RNG state; each epoch's
permutation is derived from (seed, epoch), so a resumed run draws the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset, Preprocessor, validation_split
from ..errors import ConfigError, RunError, TrainingDiverged
from ..mlp.threads import auto_threads as idle_cores
from ..runs import load_npz, make_manifest, npz_bytes, read_run, write_run
from .model import CNN, INITS, Net, init_weights, load_numpy_state, state_to_numpy
from .optim import OPTIMIZERS, Optimizer, Schedule
from .spec import PRESETS, Spec, parse_spec

CHECKPOINT = "checkpoint.npz"
INITIAL = "initial_weights.npz"
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the manifest's config."""

    spec: str = "seed"
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0
    val: int = 0
    augment: int = 0  # random shifts of up to this many pixels
    label_smoothing: float = 0.0
    init: str = "glorot"
    preprocess: str = "unit"
    dataset: str = "mnist"
    # How, not what: these do not change the result beyond floating-point rounding.
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graphs: str = "auto"
    threads: int = 0  # 0: torch's default

    HOW = ("device", "amp", "channels_last", "compile", "cuda_graphs", "threads")

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs} must be a positive integer")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be a positive integer")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        for name in ("amp", "channels_last", "cuda_graphs"):
            if getattr(self, name) not in AMP_MODES:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: choose one of: {', '.join(AMP_MODES)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if not 0 <= self.augment <= 8:
            raise ConfigError(f"--augment {self.augment} must be a shift of 0..8 pixels")
        if self.augment and self.preprocess == "standard":
            raise ConfigError(
                "--augment with --preprocess standard: per-pixel scales turn shifted strokes on the border "
                "into huge inputs; use --preprocess unit"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads} must be >= 0 (0: torch's default)")

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.HOW}


def resolve_config(spec: str = "seed", **overrides: Any) -> TrainConfig:
    """A preset's recipe (when ``spec`` names one) with explicit, non-None overrides on top."""
    values: dict[str, Any] = {"spec": spec}
    if spec in PRESETS:
        values.update(PRESETS[spec].recipe)
    known = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown training option {key!r}")
        if value is not None:
            values[key] = value
    config = TrainConfig(**values)
    config.validate()
    return config


# ----------------------------------------------------------------------------------------------
# Device and levers

def cpu_bf16_supported() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX). oneDNN's own check accepts any AVX-512 CPU, where
    bf16 is emulated and slower than float32, so ask for the instructions themselves."""
    try:
        caps = torch._C._cpu._get_cpu_capability()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except (AttributeError, RuntimeError):
        pass
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def auto_threads() -> int:
    """torch's default thread count, less the cores other processes keep busy (at least one).

    OpenMP's barriers make an oversubscribed thread team far slower than fewer threads: on a shared
    2-core machine with two busy neighbours, 2 threads ran a training step 10-40x slower than 1.
    """
    return min(torch.get_num_threads(), idle_cores())


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here (CPU-only torch or no GPU); use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
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
    data_parallel: int = 1  # CPU: each batch split across this many threads, one torch thread each

    @property
    def step_threads(self) -> int:
        """torch threads while a step runs: with the batch split, the threads are shared out among the parts."""
        return max(1, self.threads // self.data_parallel)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.amp_dtype or "")


def choose_levers(config: TrainConfig, device: torch.device, spec: Spec) -> Levers:
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
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and kind in ("cuda", "cpu") and amp is not None)
    graphs = kind == "cuda" and config.cuda_graphs != "off" and not config.compile
    threads = config.threads or (auto_threads() if kind == "cpu" else torch.get_num_threads())
    # On the CPU, PyTorch's own threads split each operation, and at batch 64 most operations are
    # too small for that to pay: two threads ran a seed-recipe step no faster than one. Splitting
    # the batch instead, one thread per part, each with its own forward and backward (torch releases
    # the GIL inside operations; the parts' gradients are summed in part order), ran it 1.6x
    # faster on 2 cores. Batch norm (statistics per part) and dropout (a shared random stream read
    # in racing order) would change the results, so those specs keep the plain path.
    # Parts smaller than 16 images run the convolutions inefficiently, hence the cap.
    parallel = 1
    if kind == "cpu" and threads > 1 and not config.compile:
        if all(layer.kind.batch_split_exact for layer in spec.layers):
            parallel = max(1, min(threads, config.batch_size // 16))
    return Levers(kind, amp, channels_last, bool(config.compile), graphs, threads,
                  kind == "cpu" and keep_freed_memory(), parallel)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Every CPU training step allocates and frees the same multi-megabyte tensors (conv1's maps and
    their gradients). By default glibc serves blocks that large with mmap and unmaps them on free,
    so steps page-fault that memory in again: measured here, 15-25% of a seed-recipe step in a bare
    loop and about 5% in this trainer (TensorFlow keeps its own pool, PyTorch on CPU does not).
    Called when CPU levers are chosen. Raising the mmap and trim thresholds
    makes freed blocks stay in the heap; the process keeps its peak memory instead. Process-wide,
    glibc only (elsewhere, or if the call fails, nothing changes); returns whether it applied.
    """
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        return False
    _freed_memory_kept = bool(ok)
    return _freed_memory_kept


# ----------------------------------------------------------------------------------------------
# The trainer

@dataclass
class TrainResult:
    run_dir: Path
    model: CNN
    history: list[dict[str, Any]]
    state: str  # complete | interrupted
    metrics: dict[str, Any] = field(default_factory=dict)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and returns."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        out: Path | str,
        *,
        progress: bool = True,
        overwrite: bool = False,
        initial_weights: dict[str, np.ndarray] | None = None,
        step_callback: Callable[["Trainer", int], None] | None = None,
    ):
        config.validate()
        self.config = config
        self.dataset = dataset
        self.out = Path(out)
        self.progress = progress
        self.step_callback = step_callback
        if self.out.exists() and not overwrite:
            raise RunError(f"{self.out}: already exists; choose another --out, or --resume it")
        self.spec: Spec = parse_spec(config.spec)
        self.device = choose_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        self.levers = choose_levers(config, self.device, self.spec)
        self._parts: Any = None  # the part threads, while run() runs
        self.stop = _StopRequest()

        images, labels = dataset.train_images, dataset.train_labels
        if images.shape[1:] != tuple(self.spec.input_shape[1:]):
            raise ConfigError(f"dataset images are {images.shape[1:]} but the spec expects {self.spec.input_shape[1:]}")
        if int(labels.max()) >= self.spec.num_classes:
            raise ConfigError(f"the output layer has {self.spec.num_classes} units but labels go up to {int(labels.max())}; use output:{int(labels.max()) + 1}")
        train_idx, val_idx = validation_split(len(images), config.val) if config.val else (np.arange(len(images)), np.arange(0))
        self.train_idx, self.val_idx = train_idx, val_idx
        self.preprocess = Preprocessor.fit(config.preprocess, images[train_idx])

        # Whole splits live on the device as raw uint8; preprocessing and augmentation run per batch.
        dev = self.device
        self.x_train = torch.from_numpy(np.ascontiguousarray(images[train_idx])).to(dev)  # (N, 28, 28) uint8
        self.y_train = torch.from_numpy(labels[train_idx].astype(np.int64)).to(dev)
        self.x_val = torch.from_numpy(np.ascontiguousarray(images[val_idx])).to(dev)
        self.y_val = torch.from_numpy(labels[val_idx].astype(np.int64)).to(dev)
        self.x_test = torch.from_numpy(np.ascontiguousarray(dataset.test_images)).to(dev)
        self.y_test = torch.from_numpy(dataset.test_labels.astype(np.int64)).to(dev)
        self.mean = torch.from_numpy(self.preprocess.mean).to(dev)
        self.scale = torch.from_numpy(self.preprocess.scale).to(dev)
        self.n_train = len(train_idx)
        if self.n_train < 1:
            raise ConfigError("no training images left after --val; lower --val")

        torch.manual_seed(config.seed)
        self.net = Net(self.spec)
        init_weights(self.net, config.init)
        if initial_weights is not None:
            load_numpy_state(self.net, initial_weights, "initial weights")
        # Files that never change once written (initial weights, finished epochs' checkpoints):
        # written once, then carried over unchanged each time the run is rewritten.
        self._unwritten: dict[str, bytes] = {INITIAL: npz_bytes(state_to_numpy(self.net))}
        self._on_disk: set[str] = set()
        self.net.to(dev)
        if self.levers.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = Optimizer(
            self.net.parameters(), config.optimizer, config.lr, momentum=config.momentum,
            nesterov=config.nesterov, weight_decay=config.weight_decay,
        )
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        if self.levers.cuda_graphs:
            self.steps_per_epoch = max(1, self.n_train // config.batch_size)  # full batches only (static shapes)
        self.schedule = Schedule.parse(config.schedule, config.lr, config.epochs, self.steps_per_epoch)
        self.train_module: Any = torch.compile(self.net) if self.levers.compile else self.net

        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, "cpu_s": 0.0}
        self._graph: Any = None
        self.warmup_s = 0.0
        # Reading the running loss makes the host wait for the device: on CPU it costs nothing, on a
        # GPU it drains the launch queue, so it happens only as often as a progress bar needs.
        self.sync_every = 1 if dev.type == "cpu" else (50 if progress else 10**9)
        self._acc = (torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long))

    # ---------------------------------------------------------------- batches and steps
    def _prep(self, raw: torch.Tensor) -> torch.Tensor:
        x = ((raw.float() - self.mean) / self.scale).unsqueeze(1)  # (B, 1, 28, 28)
        if self.levers.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.x_train[idx]  # (B, 28, 28) uint8
        shift = self.config.augment
        if shift:
            # Random translations: pad with background, then gather a shifted 28x28 window per image.
            b, h, w = raw.shape
            padded = F.pad(raw, (shift, shift, shift, shift))
            dy = torch.randint(0, 2 * shift + 1, (b, 1, 1), device=raw.device)
            dx = torch.randint(0, 2 * shift + 1, (b, 1, 1), device=raw.device)
            rows = dy + torch.arange(h, device=raw.device).view(1, h, 1)
            cols = dx + torch.arange(w, device=raw.device).view(1, 1, w)
            raw = padded[torch.arange(b, device=raw.device).view(b, 1, 1), rows, cols]
        return self._prep(raw), self.y_train[idx]

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.spec.output_activation == "sigmoid":
            target = F.one_hot(y, logits.shape[1]).float()
            if self.config.label_smoothing:
                target = target * (1 - self.config.label_smoothing) + self.config.label_smoothing / logits.shape[1]
            return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    def _autocast(self):
        dtype = self.levers.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        # The weight-cast cache must be off under CUDA graph capture (cached casts would outlive it).
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.levers.cuda_graphs)

    def _step(self, idx: torch.Tensor, acc: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = self._batch(idx)
        if self.levers.data_parallel > 1 and len(y) >= 2 * self.levers.data_parallel:
            self._parallel_step(x, y, acc)
            return
        with self._autocast():
            logits = self.train_module(x)
        logits = logits.float()
        loss = self._loss(logits, y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            acc[0].add_(loss.detach(), alpha=len(y))
            acc[1].add_((logits.argmax(1) == y).sum())

    def _parallel_step(self, x: torch.Tensor, y: torch.Tensor, acc: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One step with the batch split across threads (see choose_levers): each part's loss is
        scaled by its share of the batch, so the summed gradients are the whole batch's. The parts'
        gradients are summed here in part order, never in the order the threads finish, so a run
        is reproducible (and resumable) bit for bit."""
        xs, ys = x.tensor_split(self.levers.data_parallel), y.tensor_split(self.levers.data_parallel)
        if self._parts is None:
            from concurrent.futures import ThreadPoolExecutor

            self._parts = ThreadPoolExecutor(len(xs) - 1, thread_name_prefix="mnistlab-part")
        others = [self._parts.submit(self._part_gradients, xs[k], ys[k], len(y)) for k in range(1, len(xs))]
        results = [self._part_gradients(xs[0], ys[0], len(y))] + [f.result() for f in others]
        with torch.no_grad():
            total = results[0][0]
            for grads, _, _ in results[1:]:
                torch._foreach_add_(total, grads)
            for param, grad in zip(self._trainable, total):
                param.grad = grad
            for _, loss_sum, correct in results:
                acc[0].add_(loss_sum)
                acc[1].add_(correct)
        self.optimizer.step()

    def _part_gradients(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        with self._autocast():  # autocast is per thread
            logits = self.train_module(x)
        logits = logits.float()
        loss = self._loss(logits, y) * (len(y) / batch)
        grads = list(torch.autograd.grad(loss, self._trainable))
        with torch.no_grad():
            return grads, loss.detach() * batch, (logits.argmax(1) == y).sum()

    def _capture(self, batch_size: int, acc: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Record one full training step as a CUDA graph; later steps replay it (no launch overhead)."""
        self._static_idx = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad()
        with torch.cuda.graph(self._graph):
            self._step(self._static_idx, acc)

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> tuple[float, float]:
        if len(y) == 0:
            return math.nan, math.nan
        threads_before = torch.get_num_threads()
        if self.levers.data_parallel > 1:  # steps use a share of the threads per part; evaluation uses them all
            torch.set_num_threads(self.levers.threads)
        self.net.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device, dtype=torch.long)
        for start in range(0, len(y), batch):
            xb, yb = self._prep(x[start : start + batch]), y[start : start + batch]
            with self._autocast():
                logits = self.net(xb)
            logits = logits.float()
            loss_sum += self._loss(logits, yb) * len(yb)
            correct += (logits.argmax(1) == yb).sum()
        self.net.train()
        torch.set_num_threads(threads_before)
        return float(loss_sum) / len(y), int(correct) / len(y)

    # ---------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict[str, np.ndarray]:
        state = {"rng.cpu": torch.get_rng_state().numpy()}
        if self.device.type == "cuda":
            state["rng.cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        return state

    def _checkpoint_bytes(self, weights: dict[str, np.ndarray]) -> bytes:
        arrays: dict[str, np.ndarray] = {f"model.{k}": v for k, v in weights.items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_arrays().items()})
        arrays.update(self._rng_state())
        meta = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "partial": self.partial, "schedule": self.schedule.state(), "history": self.history,
        }
        arrays["meta"] = np.array(json.dumps(meta))
        return npz_bytes(arrays)

    def load_checkpoint(self, arrays: dict[str, np.ndarray]) -> None:
        meta = json.loads(str(arrays["meta"]))
        load_numpy_state(self.net, {k[6:]: v for k, v in arrays.items() if k.startswith("model.")}, "checkpoint")
        if self.levers.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer.load_state_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        torch.set_rng_state(torch.from_numpy(np.array(arrays["rng.cpu"])))
        if self.device.type == "cuda" and "rng.cuda" in arrays:
            torch.cuda.set_rng_state(torch.from_numpy(np.array(arrays["rng.cuda"])), self.device)
        self.epoch, self.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        self.global_step = int(meta["global_step"])
        self.partial = dict(meta["partial"])
        self.schedule.load_state(meta["schedule"])
        self.history = list(meta["history"])

    def write(self, state: str, metrics: dict[str, Any] | None = None, weights: dict[str, np.ndarray] | None = None) -> None:
        """Rewrite the run; ``weights`` when the caller already copied them off the device."""
        if weights is None:
            weights = state_to_numpy(self.net)  # one device-to-host copy for weights.npz and the checkpoint
        config = asdict(self.config)
        config["spec_name"] = config.pop("spec")
        config["spec"] = self.spec.to_dict()
        manifest = make_manifest(
            "cnn", config, dataset=self.dataset.name, state=state, epochs_done=self.epoch,
            step_in_epoch=self.step_in_epoch, metrics=metrics or {}, levers=asdict(self.levers),
            spec_string=self.spec.to_string(), val_indices=[int(self.val_idx[0]), int(self.val_idx[-1]) + 1] if len(self.val_idx) else None,
            warmup_s=round(self.warmup_s, 3),
        )
        extra = {CHECKPOINT: self._checkpoint_bytes(weights), **self._unwritten}
        write_run(self.out, manifest, weights, self.preprocess.to_arrays(), self.history,
                  overwrite=True, extra_files=extra, carry=sorted(self._on_disk))
        self._on_disk.update(self._unwritten)
        self._unwritten.clear()

    # ---------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        cfg = self.config
        if self.epoch == 0 and self.step_in_epoch == 0:
            self.write("partial")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.epochs * self.steps_per_epoch, initial=self.global_step, unit="step",
                       dynamic_ncols=True, leave=True)
        self.net.train()
        # torch's thread count is process-wide: set for the steps while run() runs, then restored
        threads_before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.levers.step_threads)
        try:
            with self.stop.installed():
                while self.epoch < cfg.epochs:
                    result = self._run_epoch(bar)
                    if result == "interrupted":
                        self.write("interrupted")
                        return self._result("interrupted")
                    if result == "diverged":
                        raise TrainingDiverged(
                            f"loss became NaN/inf in epoch {self.epoch + 1}; {self.out} keeps the weights after epoch "
                            f"{self.epoch}; lower --lr (now {cfg.lr:g}) or add a schedule"
                        )
                    if self.stop.requested:
                        self.write("interrupted")
                        return self._result("interrupted")
        finally:
            if bar is not None:
                bar.close()
            if self._parts is not None:  # no idle threads left behind by a finished run
                self._parts.shutdown()
                self._parts = None
            torch.set_num_threads(threads_before)
        metrics = dict(self.history[-1]) if self.history else {}
        metrics["epochs_trained"] = len(self.history)
        metrics["train_seconds"] = round(sum(h["train_seconds"] for h in self.history), 3)
        self.write("complete", metrics)
        return self._result("complete", metrics)

    def _result(self, state: str, metrics: dict[str, Any] | None = None) -> TrainResult:
        model = CNN(self.spec, self.preprocess, Net(self.spec))
        load_numpy_state(model.net, state_to_numpy(self.net))
        return TrainResult(self.out, model, self.history, state, metrics or {})

    def _run_epoch(self, bar: Any) -> str:
        cfg = self.config
        bs = cfg.batch_size
        order = np.random.default_rng([cfg.seed, self.epoch]).permutation(self.n_train)
        perm = torch.from_numpy(order).to(self.device)
        acc = self._acc  # persistent: a captured CUDA graph accumulates into these very tensors
        acc[0].zero_()
        acc[1].zero_()
        sync = self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        t0, cpu0 = time.perf_counter(), time.process_time()
        while self.step_in_epoch < self.steps_per_epoch:
            s = self.step_in_epoch
            idx = perm[s * bs : (s + 1) * bs]
            if self.schedule.per_step or s == 0:
                self.optimizer.set_lr(self.schedule.lr_at(self.global_step))
            if self._graph is not None and len(idx) == bs:
                self._static_idx.copy_(idx)
                self._graph.replay()
            elif self.levers.cuda_graphs and len(idx) == bs and self.global_step >= 3:
                torch.cuda.synchronize()
                t_cap = time.perf_counter()
                self._capture(bs, acc)
                self.warmup_s += time.perf_counter() - t_cap
                self._static_idx.copy_(idx)
                self._graph.replay()
            elif self.levers.cuda_graphs:
                # Warm-up before capture runs on a side stream, as CUDA graph capture requires.
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    self.optimizer.zero_grad()
                    self._step(idx, acc)
                torch.cuda.current_stream(self.device).wait_stream(stream)
            else:
                self.optimizer.zero_grad()
                self._step(idx, acc)
            self.step_in_epoch += 1
            self.global_step += 1
            self.partial["seen"] += len(idx)
            if self.step_callback is not None:
                self.step_callback(self, self.global_step)
            if self.step_in_epoch % self.sync_every == 0 or self.step_in_epoch == self.steps_per_epoch or self.stop.requested:
                loss_sum = float(acc[0])
                if not math.isfinite(loss_sum):
                    return "diverged"
                if bar is not None:
                    seen = self.partial["seen"]
                    last_loss = (self.partial["loss_sum"] + loss_sum) / max(1, seen)
                    bar.update(self.global_step - bar.n)
                    bar.set_postfix_str(
                        f"epoch {self.epoch + 1}/{cfg.epochs} loss {last_loss:.4f} "
                        f"acc {(self.partial['correct'] + int(acc[1])) / max(1, seen):.4f}", refresh=False)
            if self.stop.requested:
                break
        if sync:
            torch.cuda.synchronize()
        self.partial["loss_sum"] += float(acc[0])
        self.partial["correct"] += int(acc[1])
        self.partial["time_s"] += time.perf_counter() - t0
        self.partial["cpu_s"] = self.partial.get("cpu_s", 0.0) + time.process_time() - cpu0
        if not math.isfinite(self.partial["loss_sum"]):
            return "diverged"
        if self.step_in_epoch < self.steps_per_epoch:
            return "interrupted"
        t_eval = time.perf_counter()
        seen = max(1, self.partial["seen"])
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "loss": self.partial["loss_sum"] / seen,
            "train_accuracy": self.partial["correct"] / seen,
        }
        if len(self.val_idx):
            row["val_loss"], row["val_accuracy"] = self.evaluate(self.x_val, self.y_val)
        row["test_loss"], row["test_accuracy"] = self.evaluate(self.x_test, self.y_test)
        row["lr"] = float(self.optimizer.lr)
        row["train_seconds"] = round(self.partial["time_s"], 4)
        # CPU time of this process (all its threads): with a fixed thread count it barely moves when
        # neighbours load the machine, unlike the wall time, so benchmarks on shared CPUs report both.
        row["train_cpu_seconds"] = round(self.partial.get("cpu_s", 0.0), 4)
        row["eval_seconds"] = round(time.perf_counter() - t_eval, 4)
        row["seconds"] = round(row["train_seconds"] + row["eval_seconds"], 4)
        self.history.append(row)
        self.schedule.end_epoch(row.get("val_loss", row["loss"]))
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, "cpu_s": 0.0}
        weights = state_to_numpy(self.net)
        self._unwritten[f"checkpoints/epoch-{self.epoch:03d}.npz"] = npz_bytes(weights)
        if self.epoch < cfg.epochs:  # after the last epoch, run() writes the finished run once
            self.write("partial", dict(row), weights)
        return "ok"


# ----------------------------------------------------------------------------------------------
# Entry points

def train(
    dataset: Dataset,
    config: TrainConfig | None = None,
    out: Path | str = "runs/cnn",
    *,
    progress: bool = True,
    overwrite: bool = False,
    step_callback: Callable[[Trainer, int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a CNN on ``dataset`` and write the run to ``out``; ``overrides`` go into the config."""
    if config is None:
        config = resolve_config(**overrides)
    elif overrides:
        config = TrainConfig(**{**asdict(config), **overrides})
    trainer = Trainer(config, dataset, out, progress=progress, overwrite=overwrite, step_callback=step_callback)
    return trainer.run()


def _config_from_manifest(manifest: dict[str, Any]) -> TrainConfig:
    stored = dict(manifest["config"])
    stored["spec"] = stored.pop("spec_name", None) or stored["spec"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in stored.items() if k in known})


def resume(
    run_dir: Path | str,
    dataset: Dataset,
    *,
    reset: bool = False,
    out: Path | str | None = None,
    progress: bool = True,
    step_callback: Callable[[Trainer, int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Continue an interrupted (or extend a finished) run; with ``reset`` restart it from its initial weights.

    On resume only ``epochs`` and the how-options (device, amp, threads, ...) may change; a
    different spec or recipe is refused. On reset the recipe may change, the spec may not.
    """
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if record.kind != "cnn":
        raise RunError(f"{run_dir}: a {record.kind} run; --resume here continues CNN runs only")
    config = _config_from_manifest(record.manifest)
    stored_spec = parse_spec(record.config["spec"])
    new_spec = overrides.pop("spec", None)
    if new_spec is not None and parse_spec(new_spec) != stored_spec:
        raise ConfigError(
            f"{run_dir} was trained with spec {stored_spec.to_string()}; cannot resume it with a different spec "
            "(start a new run instead)"
        )
    if record.manifest.get("dataset") != dataset.name:
        raise ConfigError(f"{run_dir} was trained on {record.manifest.get('dataset')}, not {dataset.name}")
    allowed = set(TrainConfig.HOW) | {"epochs"}
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(config, k, v) != v}
    if not reset:
        bad = sorted(set(changed) - allowed)
        if bad:
            raise ConfigError(
                f"cannot change {', '.join('--' + b.replace('_', '-') for b in bad)} when resuming {run_dir}; "
                "use --reset to restart it from its initial weights with new settings"
            )
    config = TrainConfig(**{**asdict(config), **changed})
    config.validate()
    if reset:
        initial = load_npz(run_dir / INITIAL)
        target = Path(out) if out is not None else run_dir
        trainer = Trainer(config, dataset, target, progress=progress, overwrite=target == run_dir,
                          initial_weights=initial, step_callback=step_callback)
        return trainer.run()
    if out is not None and Path(out) != run_dir:
        raise ConfigError("--out cannot be combined with --resume (the run continues in place); use --reset --out DIR to branch")
    trainer = Trainer(config, dataset, run_dir, progress=progress, overwrite=True, step_callback=step_callback)
    trainer.load_checkpoint(load_npz(run_dir / CHECKPOINT))
    # the run continues in place: its initial weights and finished epochs' checkpoints go over as they are
    trainer._unwritten.clear()
    trainer._on_disk = {INITIAL} | {f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").glob("epoch-*.npz")}
    if trainer.epoch >= config.epochs and trainer.step_in_epoch == 0:
        raise ConfigError(f"{run_dir} has already trained {trainer.epoch} epochs; pass --epochs N > {trainer.epoch} to train more")
    return trainer.run()
