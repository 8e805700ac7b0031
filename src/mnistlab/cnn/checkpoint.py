"""Saving a CNN run and continuing it: the run directory, ``checkpoint.npz``, ``resume``.

The run directory is rewritten atomically at the start (initial weights), after every epoch, and
when training stops early (Ctrl-C / SIGTERM after the current step, or a NaN loss, which keeps the
last good epoch). ``checkpoint.npz`` holds everything needed to continue exactly where it stopped:
model, optimizer and schedule state, the position inside the epoch and the RNG state; each epoch's
permutation is derived from (seed, epoch), so a resumed run draws the same batches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Dataset
from ..errors import ConfigError, RunError
from ..runs import load_npz, make_manifest, npz_bytes, read_run, write_run
from .config import TrainConfig, config_from_manifest
from .model import load_numpy_state, state_to_numpy
from .spec import parse_spec

if TYPE_CHECKING:
    from .training import Trainer, TrainResult

CHECKPOINT = "checkpoint.npz"
INITIAL = "initial_weights.npz"


class RunFiles:
    """Files that never change once written (initial weights, finished epochs' checkpoints):
    each is written once, then carried over unchanged every time the run is rewritten."""

    def __init__(self, initial_weights: dict[str, np.ndarray]):
        self.unwritten: dict[str, bytes] = {INITIAL: npz_bytes(initial_weights)}
        self.on_disk: set[str] = set()

    def add_epoch(self, epoch: int, weights: dict[str, np.ndarray]) -> None:
        self.unwritten[f"checkpoints/epoch-{epoch:03d}.npz"] = npz_bytes(weights)

    def continue_in(self, run_dir: Path) -> None:
        """The run continues in place: what it wrote before stays as it is."""
        self.unwritten.clear()
        self.on_disk = {INITIAL} | {
            f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").glob("epoch-*.npz")
        }


def _rng_state(device: torch.device) -> dict[str, np.ndarray]:
    state = {"rng.cpu": torch.get_rng_state().numpy()}
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device).numpy()
    return state


def checkpoint_bytes(trainer: Trainer, weights: dict[str, np.ndarray]) -> bytes:
    arrays: dict[str, np.ndarray] = {f"model.{k}": v for k, v in weights.items()}
    arrays.update({f"optim.{k}": v for k, v in trainer.optimizer.state_arrays().items()})
    arrays.update(_rng_state(trainer.device))
    meta = {
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "global_step": trainer.global_step,
        "partial": trainer.partial,
        "schedule": trainer.schedule.state(),
        "history": trainer.history,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return npz_bytes(arrays)


def load_checkpoint(trainer: Trainer, arrays: dict[str, np.ndarray]) -> None:
    """Put the trainer where ``checkpoint_bytes`` left it: weights, optimizer, RNG, position, history."""
    meta = json.loads(str(arrays["meta"]))
    load_numpy_state(
        trainer.net, {k[6:]: v for k, v in arrays.items() if k.startswith("model.")}, "checkpoint"
    )
    if trainer.levers.channels_last:
        trainer.net.to(memory_format=torch.channels_last)
    trainer.optimizer.load_state_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
    torch.set_rng_state(torch.from_numpy(np.array(arrays["rng.cpu"])))
    if trainer.device.type == "cuda" and "rng.cuda" in arrays:
        torch.cuda.set_rng_state(torch.from_numpy(np.array(arrays["rng.cuda"])), trainer.device)
    trainer.epoch, trainer.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    trainer.global_step = int(meta["global_step"])
    trainer.partial = dict(meta["partial"])
    trainer.schedule.load_state(meta["schedule"])
    trainer.history = list(meta["history"])


def save_run(
    trainer: Trainer,
    state: str,
    metrics: dict[str, Any] | None = None,
    weights: dict[str, np.ndarray] | None = None,
) -> None:
    """Rewrite the run directory; ``weights`` when the caller already copied them off the device."""
    if weights is None:
        weights = state_to_numpy(trainer.net)  # one device-to-host copy for weights.npz and the checkpoint
    config = asdict(trainer.config)
    config["spec_name"] = config.pop("spec")
    config["spec"] = trainer.spec.to_dict()
    val_idx = trainer.val_idx
    manifest = make_manifest(
        "cnn",
        config,
        dataset=trainer.dataset.name,
        state=state,
        epochs_done=trainer.epoch,
        step_in_epoch=trainer.step_in_epoch,
        metrics=metrics or {},
        levers=asdict(trainer.levers),
        spec_string=trainer.spec.to_string(),
        val_indices=[int(val_idx[0]), int(val_idx[-1]) + 1] if len(val_idx) else None,
        warmup_s=round(trainer.warmup_s, 3),
    )
    files = trainer.files
    extra = {CHECKPOINT: checkpoint_bytes(trainer, weights), **files.unwritten}
    write_run(
        trainer.out,
        manifest,
        weights,
        trainer.preprocess.to_arrays(),
        trainer.history,
        overwrite=True,
        extra_files=extra,
        carry=sorted(files.on_disk),
    )
    files.on_disk.update(files.unwritten)
    files.unwritten.clear()


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
    from . import distributed
    from .training import Trainer  # the loop imports this module to save its runs

    run_dir = Path(run_dir)
    record = distributed.from_main(read_run, run_dir)  # the run lives on rank 0's machine
    if record.kind != "cnn":
        raise RunError(f"{run_dir}: a {record.kind} run; --resume here continues CNN runs only")
    if record.manifest.get("imported"):
        raise RunError(
            f"{run_dir}: imported from {record.manifest['imported'].get('file')}, not trained here, "
            "so it has no training state to resume; train its spec afresh with --spec (see mnistlab summary)"
        )
    config = config_from_manifest(record.manifest)
    stored_spec = parse_spec(record.config["spec"])
    new_spec = overrides.pop("spec", None)
    if new_spec is not None and parse_spec(new_spec) != stored_spec:
        raise ConfigError(
            f"{run_dir} was trained with spec {stored_spec.to_string()}; "
            "cannot resume it with a different spec "
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
                f"cannot change {', '.join('--' + b.replace('_', '-') for b in bad)} "
                f"when resuming {run_dir}; "
                "use --reset to restart it from its initial weights with new settings"
            )
    config = TrainConfig(**{**asdict(config), **changed})
    config.validate()
    if reset:
        initial = distributed.from_main(load_npz, run_dir / INITIAL)
        target = Path(out) if out is not None else run_dir
        trainer = Trainer(
            config,
            dataset,
            target,
            progress=progress,
            overwrite=target == run_dir,
            initial_weights=initial,
            step_callback=step_callback,
        )
        return trainer.run()
    if out is not None and Path(out) != run_dir:
        raise ConfigError(
            "--out cannot be combined with --resume (the run continues in place); "
            "use --reset --out DIR to branch"
        )
    # the same how-options: the same levers, so that the resumed arithmetic is the interrupted one's
    levers = record.manifest.get("levers") if not set(changed) - {"epochs"} else None
    trainer = Trainer(
        config, dataset, run_dir, progress=progress, overwrite=True, step_callback=step_callback,
        recorded_levers=levers if isinstance(levers, dict) else None,
    )
    load_checkpoint(trainer, distributed.from_main(load_npz, run_dir / CHECKPOINT))
    trainer.files.continue_in(run_dir)
    if trainer.epoch >= config.epochs and trainer.step_in_epoch == 0:
        raise ConfigError(
            f"{run_dir} has already trained {trainer.epoch} epochs; "
            f"pass --epochs N > {trainer.epoch} to train more"
        )
    return trainer.run()
