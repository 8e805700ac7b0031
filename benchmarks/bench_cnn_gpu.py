"""GPU benchmark of the CNN engine: one self-contained script, a few minutes on an H100/H200.

It prints, on the GPU it finds:

1. ``seed`` recipe (RMSprop lr 1e-3, batch 64, 5 epochs): wall time of the PyTorch tutorial loop
   (DataLoader over CPU tensors, batches copied to the GPU), of a plain eager loop with the data
   already on the GPU, and of mnistlab (resident data, bf16 autocast, the whole step captured as a
   CUDA graph), with the ratios; graph-capture time is reported apart.
2. ``fast`` preset: training time from data-on-GPU to >= 99.0% test accuracy, over a few seeds,
   after a warm-up run (warm-up and capture reported apart).
3. ``best`` preset: its test accuracy and training time.

Data: MNIST from mnistlab's cache. The device machine has no network, so before sending the tree::

    python benchmarks/bench_cnn_gpu.py --export-data      # copies the cache to .gpu-data/ (untracked)
    python benchmarks/bench_cnn_gpu.py                    # on the GPU machine (uses .gpu-data/ if present)
    python benchmarks/bench_cnn_gpu.py --smoke            # tiny end-to-end dry run on CPU

Each section is guarded: a failure prints one line and the script goes on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a bare checkout, no install needed
DATA_HOME = ROOT / ".gpu-data"

import numpy as np  # noqa: E402


def log(msg: str = "") -> None:
    print(msg, flush=True)


def export_data() -> int:
    from mnistlab.data import load_dataset
    from mnistlab.data.sources import home_dir

    load_dataset("mnist")  # fills the cache
    src = home_dir() / "datasets" / "mnist.npz"
    dst = DATA_HOME / "datasets" / "mnist.npz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    log(f"copied {src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB); it travels with the working tree")
    return 0


def load_mnist(smoke: bool):
    if DATA_HOME.is_dir() and "MNISTLAB_HOME" not in os.environ:
        os.environ["MNISTLAB_HOME"] = str(DATA_HOME)
    from mnistlab.data import load_dataset

    ds = load_dataset("mnist")
    return ds.subset(2048, 1000) if smoke else ds


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def seed_net(device):
    from bench_cnn import seed_net as plain_seed_net  # the same network as the CPU benchmark's baselines

    return plain_seed_net().to(device)


def test_accuracy(net, xt, yt) -> float:
    import torch

    net.eval()
    with torch.no_grad():
        acc = float((net(xt).argmax(1) == yt).float().mean())
    net.train()
    return acc


def baseline_dataloader(ds, device, epochs: int) -> tuple[float, float]:
    """The tutorial loop: DataLoader over CPU tensors, each batch copied to the device."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.from_numpy(ds.train_images).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(ds.train_labels.astype(np.int64))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    net = seed_net(device)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            loss_fn(net(xb), yb).backward()
            opt.step()
    sync(device)
    seconds = time.perf_counter() - t0
    xt = torch.from_numpy(ds.test_images).float().div_(255).unsqueeze(1).to(device)
    yt = torch.from_numpy(ds.test_labels.astype(np.int64)).to(device)
    return seconds, test_accuracy(net, xt, yt)


def baseline_resident(ds, device, epochs: int) -> tuple[float, float]:
    """Data already on the device, index-permutation batches, eager float32: the issue's 12 s anchor."""
    import torch

    torch.manual_seed(0)
    x = torch.from_numpy(ds.train_images).to(device).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(ds.train_labels.astype(np.int64)).to(device)
    net = seed_net(device)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-7, foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(y)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for s in range(0, n, 64):
            idx = perm[s : s + 64]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    sync(device)
    seconds = time.perf_counter() - t0
    xt = torch.from_numpy(ds.test_images).to(device).float().div_(255).unsqueeze(1)
    yt = torch.from_numpy(ds.test_labels.astype(np.int64)).to(device)
    return seconds, test_accuracy(net, xt, yt)


def mnistlab_run(ds, device_name: str, preset: str, **overrides):
    """One mnistlab training run; returns (trainer, result, seconds to put the data on the device).

    If capturing the step as a CUDA graph fails, say so and run again without it, so that the
    other numbers still come out.
    """
    try:
        return _mnistlab_run(ds, device_name, preset, **overrides)
    except Exception as exc:  # noqa: BLE001
        if device_name != "cuda" or overrides.get("cuda_graphs") == "off":
            raise
        log(
            f"  ({preset}: with CUDA graphs it failed: {type(exc).__name__}: {exc}; retrying with "
            "--cuda-graphs off)"
        )
        return _mnistlab_run(ds, device_name, preset, **{**overrides, "cuda_graphs": "off"})


def _mnistlab_run(ds, device_name: str, preset: str, **overrides):
    from mnistlab.cnn import Trainer, resolve_config

    config = resolve_config(preset, device=device_name, **overrides)
    tmp = tempfile.mkdtemp(prefix="mnistlab-gpu-")
    try:
        t0 = time.perf_counter()
        trainer = Trainer(config, ds, Path(tmp) / "run", progress=False)
        sync(trainer.device)
        setup_s = time.perf_counter() - t0
        result = trainer.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return trainer, result, setup_s


def section(title: str):
    log()
    log(f"== {title}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings, any device (a dry run of the script)"
    )
    parser.add_argument(
        "--export-data", action="store_true", help="copy MNIST from the local cache to .gpu-data/ and exit"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    parser.add_argument(
        "--skip", default="", help="comma list of sections to skip: dataloader,resident,seed,fast,best"
    )
    parser.add_argument("--fast-seeds", type=int, default=3)
    args = parser.parse_args()
    if args.export_data:
        return export_data()

    import torch

    t_start = time.perf_counter()
    smoke = args.smoke
    if smoke:
        torch.set_num_threads(1)  # a dry run on a shared CPU: one thread never oversubscribes
    if args.device == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_name = args.device
    device = torch.device(device_name)
    if device.type == "cpu" and not smoke:
        log("no CUDA device: run with --smoke for a CPU dry run (the full script is sized for a GPU)")
        return 1
    skip = set(filter(None, args.skip.split(",")))
    seed_epochs = 1 if smoke else 5
    best_epochs = 1 if smoke else None
    log(
        f"torch {torch.__version__}, device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
            if device.type == "cuda"
            else ""
        )
        + (" [SMOKE: tiny data, results meaningless]" if smoke else "")
    )
    t0 = time.perf_counter()
    ds = load_mnist(smoke)
    log(
        f"data: {len(ds.train_labels)} train / {len(ds.test_labels)} test images loaded in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    if device.type == "cuda":
        t0 = time.perf_counter()
        torch.zeros(1, device=device)
        torch.backends.cudnn.benchmark = True
        log(f"CUDA context: {time.perf_counter() - t0:.2f} s")
    results: dict[str, float] = {}

    if "dataloader" not in skip:
        section(f"seed recipe, {seed_epochs} epochs: PyTorch tutorial loop (DataLoader, batch 64, float32)")
        try:
            baseline_dataloader(ds.subset(6400, 1000), device, 1)  # warm-up: cuDNN, allocator
            secs, acc = baseline_dataloader(ds, device, seed_epochs)
            results["dataloader"] = secs
            log(
                f"DataLoader loop:        {secs:7.2f} s for {seed_epochs} epochs, test accuracy "
                f"{100 * acc:.2f}%"
            )
        except Exception as exc:  # noqa: BLE001 - report and go on
            log(f"DataLoader loop FAILED: {type(exc).__name__}: {exc}")

    if "resident" not in skip:
        section(f"seed recipe, {seed_epochs} epochs: eager loop with the data on the device (float32)")
        try:
            secs, acc = baseline_resident(ds, device, seed_epochs)
            results["resident"] = secs
            log(
                f"resident eager loop:    {secs:7.2f} s for {seed_epochs} epochs, test accuracy "
                f"{100 * acc:.2f}%"
            )
        except Exception as exc:  # noqa: BLE001
            log(f"resident eager loop FAILED: {type(exc).__name__}: {exc}")

    if "seed" not in skip:
        section(f"seed recipe, {seed_epochs} epochs: mnistlab (resident data, bf16 autocast, CUDA graph)")
        variants = (
            [("auto", {})]
            if smoke
            else [
                ("auto", {}), ("no graphs", {"cuda_graphs": "off"}),
                ("float32, no graphs", {"cuda_graphs": "off", "amp": "off"}),
            ]
        )
        for label, extra in variants:
            try:
                mnistlab_run(ds.subset(6400, 1000), device_name, "seed", epochs=1, **extra)  # warm-up
                trainer, result, setup_s = mnistlab_run(ds, device_name, "seed", epochs=seed_epochs, **extra)
                train_s = sum(h["train_seconds"] for h in result.history)
                lev = trainer.levers
                log(
                    f"mnistlab [{label}]: {train_s:7.2f} s for {seed_epochs} epochs (of which graph "
                    f"capture {trainer.warmup_s:.2f} s), test accuracy "
                    f"{100 * result.history[-1]['test_accuracy']:.2f}%, data to device {setup_s:.2f} s; "
                    f"levers amp={lev.amp_dtype} channels_last={lev.channels_last} "
                    f"cuda_graphs={lev.cuda_graphs}; per epoch "
                    + " ".join(f"{h['train_seconds']:.2f}" for h in result.history)
                )
                results[f"mnistlab {label}"] = train_s
            except Exception as exc:  # noqa: BLE001
                log(f"mnistlab [{label}] FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=3)
        base = results.get("dataloader")
        for key, secs in results.items():
            if key.startswith("mnistlab") and base:
                log(
                    f"ratio {key} / DataLoader loop: {secs / base:.3f}x (target <= 0.2x)"
                    + (
                        f"; / resident eager loop: {secs / results['resident']:.3f}x"
                        if "resident" in results
                        else ""
                    )
                )

    if "fast" not in skip:
        section("fast preset: training time from data-on-device to >= 99.0% test accuracy")
        try:
            trainer, result, setup_s = mnistlab_run(ds, device_name, "fast", seed=100)  # warm-up run
            log(
                f"warm-up run (not counted): data to device {setup_s:.2f} s, capture "
                f"{trainer.warmup_s:.2f} s, train {sum(h['train_seconds'] for h in result.history):.3f} s, "
                f"test accuracy {100 * result.history[-1]['test_accuracy']:.2f}%"
            )
            for seed in range(args.fast_seeds):
                trainer, result, setup_s = mnistlab_run(
                    ds, device_name, "fast", seed=seed, epochs=1 if smoke else None
                )
                elapsed, reached = 0.0, None
                for h in result.history:
                    elapsed += h["train_seconds"]
                    if h["test_accuracy"] >= 0.99:
                        reached = (h["epoch"], elapsed)
                        break
                accs = " ".join(f"{100 * h['test_accuracy']:.2f}%" for h in result.history)
                if reached:
                    log(
                        f"seed {seed}: >= 99.0% after epoch {reached[0]}: {reached[1]:.3f} s training "
                        f"(incl. graph capture {trainer.warmup_s:.3f} s; without it "
                        f"{reached[1] - trainer.warmup_s:.3f} s); "
                        f"data to device {setup_s:.2f} s; test accuracy per epoch {accs}"
                    )
                else:
                    log(f"seed {seed}: did not reach 99.0% (test accuracy per epoch {accs})")
        except Exception as exc:  # noqa: BLE001
            log(f"fast preset FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)

    if "best" not in skip:
        section("best preset: single-model test accuracy and training time")
        try:
            extra = {"epochs": best_epochs} if best_epochs else {}
            trainer, result, setup_s = mnistlab_run(ds, device_name, "best", **extra)
            train_s = sum(h["train_seconds"] for h in result.history)
            log(
                f"best: test accuracy {100 * result.history[-1]['test_accuracy']:.2f}% after "
                f"{len(result.history)} epochs, {train_s:.2f} s training (capture {trainer.warmup_s:.2f} "
                "s); per-epoch accuracy "
                + " ".join(f"{100 * h['test_accuracy']:.2f}" for h in result.history)
            )
        except Exception as exc:  # noqa: BLE001
            log(f"best preset FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)

    log()
    log(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
