"""The CNN training loop: data resident on the device, batches by index permutation, one epoch
after another, evaluation, and a stop that finishes the current step.

The rooms around it: config.py (what a run is), levers.py (how it goes fast, and every
process-wide setting it changes), checkpoint.py (saving the run, resuming it), stop.py (Ctrl-C and
SIGTERM: a clean stop), progress.py (the bar), distributed.py (the same loop as one rank of many).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..callbacks import StopTraining
from ..data import Dataset, Preprocessor, validation_split
from ..errors import ConfigError, RunError, TrainingDiverged
from . import distributed
from .checkpoint import CHECKPOINT, INITIAL, RunFiles, load_checkpoint, resume, save_run
from .config import AMP_MODES, DEVICES, TrainConfig, resolve_config
from .levers import (
    CudaGraphStep,
    Levers,
    SplitBatch,
    auto_threads,
    choose_device,
    choose_levers,
    process_settings,
    torch_threads,
)
from .model import CNN, Net, channels_last_strides, init_weights, load_numpy_state, state_to_numpy
from .optim import Optimizer, Schedule
from .progress import ProgressBar
from .spec import Spec, parse_spec
from .stop import StopRequest


@dataclass
class TrainResult:
    run_dir: Path
    model: CNN
    history: list[dict[str, Any]]
    state: str  # complete | interrupted
    metrics: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:  # Jupyter: a summary table and the curves
        from ..notebook import training_html

        return training_html("cnn", self.run_dir, self.history, state=self.state)


def _fresh_epoch() -> dict[str, Any]:
    """The running sums of the epoch in progress (saved in checkpoints, so a resumed epoch reports whole)."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, "cpu_s": 0.0}


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
        step_callback: Callable[[Trainer, int], None] | None = None,
        epoch_callback: Callable[[dict[str, Any]], None] | None = None,
        recorded_levers: dict[str, Any] | None = None,
    ):
        """``epoch_callback`` gets each epoch's history row; raising StopTraining there ends the run
        after that epoch (saved as interrupted). A dataset with an empty test split is never tested.
        ``recorded_levers``: a resumed run's own levers (choose_levers)."""
        config.validate()
        self.config = config
        self.dataset = dataset
        self.out = Path(out)
        self.ranks = distributed.current()
        distributed.check_batch(config.batch_size, self.ranks)
        self.progress = progress and self.ranks.is_main
        self.step_callback = step_callback
        self.epoch_callback = epoch_callback
        if self.out.exists() and not overwrite and self.ranks.is_main:
            raise RunError(f"{self.out}: already exists; choose another --out, or --resume it")
        self.spec: Spec = parse_spec(config.spec)
        self.device = distributed.device_for(choose_device(config.device), self.ranks)
        self.levers: Levers = distributed.levers_for(
            config, self.device, self.spec, self.ranks, recorded_levers
        )
        self.stop = StopRequest(deferred=self.ranks.active)

        images, labels = dataset.train_images, dataset.train_labels
        if images.shape[1:] != tuple(self.spec.input_shape[1:]):
            raise ConfigError(
                f"dataset images are {images.shape[1:]} but the spec expects {self.spec.input_shape[1:]}"
            )
        if int(labels.max()) >= self.spec.num_classes:
            raise ConfigError(
                f"the output layer has {self.spec.num_classes} units but labels go up to "
                f"{int(labels.max())}; use output:{int(labels.max()) + 1}"
            )
        train_idx, val_idx = (
            validation_split(len(images), config.val)
            if config.val
            else (np.arange(len(images)), np.arange(0))
        )
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

        # The run's random stream (initial weights, dropout, augmentation) is torch's global
        # generator, seeded here; checkpoints save and restore its state.
        torch.manual_seed(config.seed)
        self.net = Net(self.spec)
        init_weights(self.net, config.init)
        if initial_weights is not None:
            load_numpy_state(self.net, initial_weights, "initial weights")
        self.files = RunFiles(state_to_numpy(self.net))
        self.net.to(dev)
        self.net.winograd = dict(self.levers.winograd)
        self.net.pooled_conv = set(self.levers.pooled_conv)
        self.net.pool_relu = set(self.levers.pool_relu)
        if self.levers.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = Optimizer(
            self.net.parameters(),
            config.optimizer,
            config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        if self.levers.cuda_graphs:
            self.steps_per_epoch = max(
                1, self.n_train // config.batch_size
            )  # full batches only (static shapes)
        self.schedule = Schedule.parse(config.schedule, config.lr, config.epochs, self.steps_per_epoch)
        self._acc = (torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long))
        module = distributed.data_parallel(self.net, dev, self.ranks)
        self.agreement = (  # the ranks agree on a stop or a NaN inside each step's gradient all-reduce
            distributed.StepAgreement(module, self.stop, self._acc[0]) if self.ranks.active else None
        )
        self.train_module: Any = torch.compile(module) if self.levers.compile else module
        parts = self.levers.data_parallel
        self.split = None
        if parts > 1:
            # under --threads auto the probe's choice (parts on all cores or one after another) is
            # where the steps start: the cores stay theirs, and the steps' own times may change it
            cores = self.levers.threads if config.threads else max(self.levers.threads, auto_threads())
            self.split = SplitBatch(parts, cores, together=self.levers.threads >= parts)
        self.graph = CudaGraphStep(dev) if self.levers.cuda_graphs else None

        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.partial = _fresh_epoch()
        self.warmup_s = 0.0
        # Reading the running loss makes the host wait for the device: on CPU it costs nothing, on a
        # GPU it drains the launch queue, so it happens only as often as a progress bar needs.
        self.sync_every = 1 if dev.type == "cpu" else (50 if progress else 10**9)

    # ---------------------------------------------------------------- batches and steps
    def _prep(self, raw: torch.Tensor) -> torch.Tensor:
        x = ((raw.float() - self.mean) / self.scale).unsqueeze(1)  # (B, 1, 28, 28)
        return channels_last_strides(x) if self.levers.channels_last else x

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select: the same rows as x_train[idx], without advanced indexing's general machinery
        raw = self.x_train.index_select(0, idx)  # (B, 28, 28) uint8
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
        return self._prep(raw), self.y_train.index_select(0, idx)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.spec.output_activation == "sigmoid":
            target = F.one_hot(y, logits.shape[1]).float()
            if self.config.label_smoothing:
                target = (
                    target * (1 - self.config.label_smoothing) + self.config.label_smoothing / logits.shape[1]
                )
            return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    def _autocast(self):
        dtype = self.levers.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        # The weight-cast cache must be off under CUDA graph capture (cached casts would outlive it).
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.levers.cuda_graphs)

    def _step(self, idx: torch.Tensor, acc: tuple[torch.Tensor, torch.Tensor]) -> None:
        batch = len(idx)
        idx = distributed.share(idx, self.ranks)  # this rank's part of the global batch
        x, y = self._batch(idx)
        if self.split is not None and len(y) >= 2 * self.split.parts:
            grads, parts = self.split.run(self._part_gradients, x, y)
            with torch.no_grad():
                for param, grad in zip(self._trainable, grads):
                    param.grad = grad
                for loss_sum, correct in parts:
                    acc[0].add_(loss_sum)
                    acc[1].add_(correct)
            self.optimizer.step()
            return
        with self._autocast():
            logits = self.train_module(x)
        logits = logits.float()
        # the last batch of an epoch may leave a rank no image: a zero loss keeps it in step
        loss = self._loss(logits, y) if len(y) else logits.sum() * 0.0
        with torch.no_grad():  # before the backward, whose all-reduce carries the ranks' NaN check
            acc[0].add_(loss.detach(), alpha=len(y))
            acc[1].add_((logits.argmax(1) == y).sum())
        (loss * distributed.loss_weight(len(y), batch, self.ranks) if self.ranks.active else loss).backward()
        self.optimizer.step()

    def _part_gradients(
        self, x: torch.Tensor, y: torch.Tensor, batch: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One part of a split batch (SplitBatch): its loss scaled by its share of the batch."""
        with self._autocast():  # autocast is per thread
            logits = self.train_module(x)
        logits = logits.float()
        loss = self._loss(logits, y) * (len(y) / batch)
        grads = list(torch.autograd.grad(loss, self._trainable))
        with torch.no_grad():
            return grads, loss.detach() * batch, (logits.argmax(1) == y).sum()

    def _train_step(self, idx: torch.Tensor, acc: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One optimizer step on the batch ``idx``, replayed from a CUDA graph where one is captured."""
        bs = self.config.batch_size
        graph = self.graph
        if graph is None:
            self.optimizer.zero_grad()
            self._step(idx, acc)
        elif graph.graph is not None and len(idx) == bs:
            graph.replay(idx)
        elif len(idx) == bs and self.global_step >= graph.WARMUP_STEPS:
            torch.cuda.synchronize()
            t_cap = time.perf_counter()
            self.optimizer.zero_grad()
            graph.capture(bs, lambda static_idx: self._step(static_idx, acc))
            self.warmup_s += time.perf_counter() - t_cap
            graph.replay(idx)
        else:

            def step() -> None:
                self.optimizer.zero_grad()
                self._step(idx, acc)

            graph.warm_up(step)

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> tuple[float, float]:
        if len(y) == 0:
            return math.nan, math.nan
        count = len(y)
        x, y = distributed.share(x, self.ranks), distributed.share(y, self.ranks)  # each image once
        # steps use a share of the threads per part; evaluation uses them all
        with torch_threads(self.levers.threads if self.split is not None else None):
            self.net.eval()
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            for start in range(0, len(y), batch):
                xb, yb = self._prep(x[start : start + batch]), y[start : start + batch]
                with self._autocast():
                    logits = self.net(xb)
                logits = logits.float()
                loss_sum += self._loss(logits, yb) * len(yb)
                correct += (logits.argmax(1) == yb).sum()
            self.net.train()
        distributed.sum_(loss_sum, correct)
        return float(loss_sum) / count, int(correct) / count

    # ---------------------------------------------------------------- the loop
    def write(
        self, state: str, metrics: dict[str, Any] | None = None, weights: dict[str, np.ndarray] | None = None
    ) -> None:
        distributed.main_writes(lambda: save_run(self, state, metrics, weights))

    def run(self) -> TrainResult:
        cfg = self.config
        bar = None
        with process_settings(self.levers):
            if self.epoch == 0 and self.step_in_epoch == 0:
                self.write("partial")
            if self.progress:
                bar = ProgressBar(cfg.epochs * self.steps_per_epoch, self.global_step, cfg.epochs)
            self.net.train()
            distributed.seed_rank_stream(cfg.seed, self.global_step, self.ranks)
            try:
                with self.stop.installed():
                    while self.epoch < cfg.epochs:
                        result = self._run_epoch(bar)
                        if result == "interrupted":
                            self.write("interrupted")
                            return self._result("interrupted")
                        if result == "diverged":
                            raise TrainingDiverged(
                                f"loss became NaN/inf in epoch {self.epoch + 1}; "
                                f"{self.out} keeps the weights after "
                                f"epoch {self.epoch}; lower --lr (now {cfg.lr:g}) or add a schedule"
                            )
                        if self.stop.requested:
                            self.write("interrupted")
                            return self._result("interrupted")
            finally:
                if bar is not None:
                    bar.close()
                if self.split is not None:
                    self.split.close()
            metrics = dict(self.history[-1]) if self.history else {}
            metrics["epochs_trained"] = len(self.history)
            metrics["train_seconds"] = round(sum(h["train_seconds"] for h in self.history), 3)
            self.write("complete", metrics)
        return self._result("complete", metrics)

    def _result(self, state: str, metrics: dict[str, Any] | None = None) -> TrainResult:
        model = CNN(self.spec, self.preprocess, Net(self.spec))
        load_numpy_state(model.net, state_to_numpy(self.net))
        return TrainResult(self.out, model, self.history, state, metrics or {})

    def _run_epoch(self, bar: ProgressBar | None) -> str:
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
            self._train_step(idx, acc)
            self.step_in_epoch += 1
            self.global_step += 1
            self.partial["seen"] += len(idx)
            if self.step_callback is not None:
                self.step_callback(self, self.global_step)
            if self.agreement is not None and (  # a stop waits for at most AGREE_EVERY steps
                self.step_in_epoch % distributed.agree_every(self.sync_every) == 0
                or self.step_in_epoch == self.steps_per_epoch
            ):
                if self.agreement.diverged():
                    return "diverged"
            if (
                self.step_in_epoch % self.sync_every == 0
                or self.step_in_epoch == self.steps_per_epoch
                or self.stop.requested
            ):
                loss_sum = float(acc[0])
                if not math.isfinite(loss_sum):
                    return "diverged"
                if bar is not None:
                    # rank 0 sees its share of the sums until the epoch's end adds all ranks' up
                    world, seen = self.ranks.world_size, max(1, self.partial["seen"])
                    loss = (self.partial["loss_sum"] + loss_sum * world) / seen
                    accuracy = (self.partial["correct"] + int(acc[1]) * world) / seen
                    bar.show(self.global_step, self.epoch + 1, loss, accuracy)
            if self.stop.requested:
                break
        if sync:
            torch.cuda.synchronize()
        distributed.sum_(*acc)  # the epoch's sums over all ranks
        self.partial["loss_sum"] += float(acc[0])
        self.partial["correct"] += int(acc[1])
        self.partial["time_s"] += time.perf_counter() - t0
        self.partial["cpu_s"] = self.partial.get("cpu_s", 0.0) + time.process_time() - cpu0
        if not math.isfinite(self.partial["loss_sum"]):
            return "diverged"
        if self.step_in_epoch < self.steps_per_epoch:
            return "interrupted"
        self.history.append(self._epoch_row())
        self.schedule.end_epoch(self.history[-1].get("val_loss", self.history[-1]["loss"]))
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = _fresh_epoch()
        weights = state_to_numpy(self.net)
        self.files.add_epoch(self.epoch, weights)
        if self.epoch < cfg.epochs:  # after the last epoch, run() writes the finished run once
            self.write("partial", dict(self.history[-1]), weights)
        if self.epoch_callback is not None:
            try:
                self.epoch_callback(dict(self.history[-1]))
            except StopTraining:
                self.stop.requested = True  # run() saves the run as interrupted and returns
        return "ok"

    def _epoch_row(self) -> dict[str, Any]:
        """The finished epoch's line of history.json: training sums, evaluation, timings."""
        t_eval = time.perf_counter()
        seen = max(1, self.partial["seen"])
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "loss": self.partial["loss_sum"] / seen,
            "train_accuracy": self.partial["correct"] / seen,
        }
        if len(self.val_idx):
            row["val_loss"], row["val_accuracy"] = self.evaluate(self.x_val, self.y_val)
        if len(self.y_test):
            row["test_loss"], row["test_accuracy"] = self.evaluate(self.x_test, self.y_test)
        row["lr"] = float(self.optimizer.lr)
        row["train_seconds"] = round(self.partial["time_s"], 4)
        # CPU time of this process (all its threads): with a fixed thread count it barely moves when
        # neighbours load the machine, unlike the wall time, so benchmarks on shared CPUs report both.
        row["train_cpu_seconds"] = round(self.partial.get("cpu_s", 0.0), 4)
        row["eval_seconds"] = round(time.perf_counter() - t_eval, 4)
        row["seconds"] = round(row["train_seconds"] + row["eval_seconds"], 4)
        return row


def train(
    dataset: Dataset | str,
    config: TrainConfig | None = None,
    out: Path | str = "runs/cnn",
    *,
    progress: bool = True,
    overwrite: bool = False,
    step_callback: Callable[[Trainer, int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a CNN on ``dataset`` (a Dataset or a name such as "mnist") and write the run to ``out``;
    ``overrides`` go into the config."""
    if isinstance(dataset, str):  # as mnistlab.mlp.train_on_dataset takes it
        from ..data import load_dataset

        dataset = load_dataset(dataset)
    if config is None:
        config = resolve_config(**overrides)
    elif overrides:
        config = TrainConfig(**{**asdict(config), **overrides})
    trainer = Trainer(
        config, dataset, out, progress=progress, overwrite=overwrite, step_callback=step_callback
    )
    return trainer.run()


__all__ = [  # resume and the config live in their own rooms; importable from here as before
    "AMP_MODES",
    "CHECKPOINT",
    "DEVICES",
    "INITIAL",
    "Levers",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "auto_threads",
    "choose_device",
    "choose_levers",
    "load_checkpoint",
    "resolve_config",
    "resume",
    "train",
]
