"""Data-parallel CNN training (DDP over gloo) with real torchrun processes on small subsets.

Each process start costs seconds, so the multi-process tests are few, each checking several
things, and marked slow. ``ddp_cli.py`` is the real CLI with its dataset read from a small .npz.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # pytest -n 2 on 2 cores: more threads per worker only oversubscribe

from mnistlab.cli import main  # noqa: E402
from mnistlab.cnn import distributed, train  # noqa: E402
from mnistlab.cnn.distributed import GlobalBatchNorm, Ranks  # noqa: E402
from mnistlab.errors import ConfigError  # noqa: E402
from mnistlab.runs import load_npz, read_manifest  # noqa: E402
from test_cnn_train import synthetic  # noqa: E402

TESTS = Path(__file__).parent
CLI = str(TESTS / "ddp_cli.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# The seed network with batch norm after its first conv (global-batch statistics across ranks)
BN_SPEC = "conv:8:3,bn,pool:2,conv:16:3,pool:2,flatten,dense:32,output:10"
# Small enough that a job's epochs take a second or two, long enough to be stopped mid-epoch
SMALL_SPEC = "conv:16:3,pool:2,conv:32:3,pool:2,flatten,dense:32,output:10"
# DDP wrappers made in this process, kept until it exits. torch 2.13 frees a DDP's gloo group by
# joining its threads while holding the GIL, and one of them may still be releasing a Python object
# of the last step (the comm hook's callback): a hang, seen once in CI's pytest worker. Rank
# processes avoid it by ending with os._exit (cli.end_rank_process); a test process cannot, so it
# frees them only at exit, when those threads have long been idle.
KEPT_UNTIL_EXIT: list = []


def synthetic_arrays(n_train, n_test=200):
    """The learnable bars of test_cnn_train.synthetic, as the arrays a job reads from its .npz."""
    ds = synthetic(n_train, n_test)
    return {"train_images": ds.train_images, "train_labels": ds.train_labels,
            "test_images": ds.test_images, "test_labels": ds.test_labels}


def dataset_of(arrays):
    from mnistlab.data import Dataset

    return Dataset(
        "mnist",
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        tuple(str(d) for d in range(10)),
    )


def environment(data: Path) -> dict[str, str]:
    env = dict(os.environ)
    src = str(TESTS.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["MNISTLAB_TEST_DATASET"] = str(data)
    env.pop("OMP_NUM_THREADS", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_pid(data: Path, rank: int) -> int | None:
    """The worker process of ``rank`` in the job reading ``data`` (found by its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"MNISTLAB_TEST_DATASET={data}".encode() in env
            and f"RANK={rank}".encode() in env
            and b"TORCHELASTIC_RUN_ID" in b"\0".join(env)
        ):
            return int(entry.name)
    return None


def wait_for_epoch(run: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended early: {proc.communicate()}")
        try:
            if read_manifest(run)["epochs_done"] >= epoch:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epoch} in {run} after {timeout} s")


def weights_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


# ----------------------------------------------------------------------------------------------
# One process: the pieces


def test_shares_cover_each_batch_once_and_weights_average_to_the_mean_loss():
    batch = torch.arange(67)
    for world in (1, 2, 3, 5):
        shares = [distributed.share(batch, Ranks(r, world, r, world, "gloo")) for r in range(world)]
        assert torch.equal(torch.cat(shares), batch)  # in rank order, each item once, no padding
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        weights = [
            distributed.loss_weight(len(s), len(batch), Ranks(0, world, 0, world, "gloo")) for s in shares
        ]
        assert sum(weights) / world == pytest.approx(1.0)  # DDP divides the summed gradients by world
    assert distributed.share(batch, Ranks()) is batch  # one process: the whole batch
    with pytest.raises(ConfigError, match="--batch-size 2 is the global batch"):
        distributed.check_batch(2, Ranks(0, 3, 0, 3, "gloo"))


def test_global_batch_norm_is_batch_norm_in_a_group_of_one(tmp_path):
    """The two-pass statistics and the gradient through the sum over ranks match torch's batch norm
    (a group of one: the sums are the identity, so any gap is in the formulas)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for shape, plain in (((6, 3, 5, 5), torch.nn.BatchNorm2d(3)), ((7, 4), torch.nn.BatchNorm1d(4))):
            torch.manual_seed(0)
            with torch.no_grad():
                plain.weight.uniform_(0.5, 1.5)
                plain.bias.uniform_(-1, 1)
            ours = GlobalBatchNorm(plain.num_features)
            ours.load_state_dict(plain.state_dict())
            x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
            grads = []
            for module in (plain, ours):
                xi = x.clone().requires_grad_(True)
                out = module(xi)
                (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
                grads.append((out.detach(), xi.grad, module.weight.grad, module.bias.grad))
            for got, want in zip(grads[1], grads[0]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(ours, name), getattr(plain, name), rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_ddp_gets_the_buffer_sync_flag_under_the_name_the_installed_torch_knows(tmp_path, monkeypatch):
    """torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers and the cnn extra allows
    older torch (the GPU machine's 2.11 refused the new name): the real DDP of this torch takes the
    flag, and a DDP with only the old name gets it under that name."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ranks = Ranks(backend="gloo")
        wrapped = distributed.data_parallel(torch.nn.Linear(3, 2), torch.device("cpu"), ranks)
        KEPT_UNTIL_EXIT.append(wrapped)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)

        class OldDistributedDataParallel(torch.nn.Module):
            def __init__(self, module, device_ids=None, broadcast_buffers=True):
                super().__init__()
                self.module, self.broadcast_buffers = module, broadcast_buffers

        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", OldDistributedDataParallel)
        # a module with a buffer that is not a batch norm's: ranks must keep syncing it
        net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        net[0].register_buffer("counter", torch.zeros(1))
        assert distributed.data_parallel(net, torch.device("cpu"), ranks).broadcast_buffers is True
        plain = distributed.data_parallel(torch.nn.Linear(3, 2), torch.device("cpu"), ranks)
        assert plain.broadcast_buffers is False
    finally:
        dist.destroy_process_group()


def test_a_rank_chooses_its_levers_for_its_share_of_the_batch_and_cores():
    """A rank probes only what it uses: its share of the cores (no thread split, no one-thread
    alternative that DDP would override) and both float32 layouts at its share of the batch."""
    from mnistlab.cnn import resolve_config
    from mnistlab.cnn.spec import parse_spec

    rank = Ranks(1, 2, 1, 2, "gloo")
    config = resolve_config(spec="conv:4:3,pool:2,flatten,output:10", batch_size=64, amp="off")
    levers = distributed.levers_for(config, torch.device("cpu"), parse_spec(config.spec), rank, None)
    threads = distributed.threads_per_rank(rank)
    assert (levers.threads, levers.data_parallel, levers.world_size) == (threads, 1, 2)
    assert "channels-last" in levers.measured and "NCHW" in levers.measured
    assert "batch split" not in levers.measured
    assert levers.measured.count(f"{threads} thread(s)") == 2  # the two layouts, nothing else


def test_step_agreement_averages_gradients_and_carries_stop_and_nan_flags(tmp_path):
    """In a group of one, DDP with the agreement hook gives the plain network's gradients (any gap
    is in the packing), and the flags say what this rank saw: a pending stop, a NaN loss."""
    import torch.distributed as dist

    from mnistlab.cnn.stop import StopRequest

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        torch.nn.functional.cross_entropy(net(x), y).backward()
        plain = [p.grad.clone() for p in net.parameters()]
        stop, loss_sum = StopRequest(deferred=True), torch.zeros(())
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        agreement = distributed.StepAgreement(ddp, stop, loss_sum)
        KEPT_UNTIL_EXIT.append((ddp, agreement))
        for pending, loss in ((False, 1.0), (True, float("nan"))):
            net.zero_grad()
            stop.pending = pending
            loss_sum.fill_(loss)
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            for got, want in zip([p.grad for p in net.parameters()], plain):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert agreement.diverged() is (loss != loss)
            assert stop.requested is pending
    finally:
        dist.destroy_process_group()


def test_nproc_needs_out_and_cannot_run_inside_torchrun(monkeypatch, capsys):
    assert main(["train", "cnn", "--nproc", "2", "--epochs", "1"]) == 1
    assert "--nproc needs --out DIR" in capsys.readouterr().err
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["train", "cnn", "--nproc", "2", "--out", "x"]) == 1
    assert "--nproc inside torchrun" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Real torchrun jobs


@pytest.mark.slow
def test_two_ranks_train_the_weights_of_one_process(tmp_path, real_home):
    """2 ranks x global batch 64 == 1 process x batch 64 after one epoch on 2,000 MNIST images.

    Only the order of float32 sums differs (each rank sums its 32 images, then the two halves are
    added). That perturbs a gradient by a few ulps of its largest terms; RMSprop divides by
    sqrt(v), so a component near zero can move by up to ~lr * 5e-4 per step; 32 steps at lr 1e-3
    bound the weight gap by ~2e-5. A different recipe (batch 32) lands ~1e-2 away: the test can fail.

    Rank 0 ends with gloo work in flight (ddp_cli.py): a rank's process still exits with its status
    rather than aborting when a gloo thread wants the GIL after the command (cli.end_rank_process).
    """
    from mnistlab.data import load_dataset

    ds = load_dataset("mnist").subset(2000, 1000)
    data = tmp_path / "mnist-2000.npz"
    np.savez(
        data,
        train_images=ds.train_images,
        train_labels=ds.train_labels,
        test_images=ds.test_images,
        test_labels=ds.test_labels,
    )
    # one memory layout for both (no timed choice): other conv kernels round differently, and RMSprop
    # turns the rounding noise of a near-zero gradient into a full step
    layout = {"channels_last": "off"}
    recipe = ["--spec", "seed", "--epochs", "1", "--batch-size", "64", "--amp", "off", "--threads", "1",
              "--channels-last", "off"]
    # standalone: the rendezvous binds a port the OS picks (torchrun's fixed default may be held by
    # another job, and a port found free beforehand may be taken before torchrun binds it)
    torchrun = [*TORCHRUN, "--standalone", "--nproc-per-node", "2"]
    job = subprocess.run(
        [*torchrun, CLI, "train", "cnn", *recipe, "--out", str(tmp_path / "two"), "--no-progress"],
        env={**environment(data), "MNISTLAB_TEST_WORK_IN_FLIGHT": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "terminate called" not in job.stderr
    assert job.stdout.count("test accuracy") == 1  # rank 0 alone reports

    one = train(
        ds, out=tmp_path / "one", progress=False, spec="seed", epochs=1, batch_size=64, amp="off", threads=1,
        **layout,
    )
    other = train(
        ds, out=tmp_path / "b32", progress=False, spec="seed", epochs=1, batch_size=32, amp="off", threads=1,
        **layout,
    )
    two = load_npz(tmp_path / "two" / "weights.npz")
    assert weights_gap(two, load_npz(tmp_path / "one" / "weights.npz")) < 2e-5
    assert weights_gap(two, load_npz(tmp_path / "b32" / "weights.npz")) > 1e-3
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    # metrics summed over ranks: the loss over all 2,000 images, the test accuracy over all 1,000
    assert history[0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-5)
    assert history[0]["test_accuracy"] == pytest.approx(one.history[0]["test_accuracy"], abs=2e-3)
    assert other.history[0]["loss"] != pytest.approx(one.history[0]["loss"], rel=1e-3)
    manifest = read_manifest(tmp_path / "two")
    assert manifest["levers"]["world_size"] == 2 and manifest["levers"]["threads"] == 1


@pytest.mark.slow
def test_two_machines_train_one_run_that_rank_0_alone_writes(tmp_path):
    """Two torchrun launchers (--nnodes 2) meet at a c10d rendezvous on 127.0.0.1, each in its own
    directory with the same relative --out: the run exists on node 0 only, complete and whole.
    Batch norm takes the global batch's statistics, so the run equals one process; the last batch
    (321 = 5 x 64 + 1) leaves node 1 no image at all."""
    arrays = synthetic_arrays(321)
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    recipe = [
        "--spec",
        BN_SPEC,
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--amp",
        "off",
        "--seed",
        "1",
    ]
    port = free_port()
    nodes = []
    for node in (0, 1):
        where = tmp_path / f"node{node}"
        where.mkdir()
        nodes.append(
            subprocess.Popen(
                [
                    *TORCHRUN,
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(node),
                    "--nproc-per-node",
                    "1",
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{port}",
                    "--rdzv-id",
                    "mnistlab-test",
                    CLI,
                    "train",
                    "cnn",
                    *recipe,
                    "--out",
                    "run",
                    "--no-progress",
                ],
                cwd=where,
                env=environment(data),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [proc.communicate(timeout=600) for proc in nodes]
    assert [proc.returncode for proc in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert list((tmp_path / "node1").iterdir()) == []  # rank 1 wrote nothing
    assert [p.name for p in (tmp_path / "node0").iterdir()] == ["run"]  # no partial or leftover files
    run = tmp_path / "node0" / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-001.npz", "epoch-002.npz"]
    manifest = read_manifest(run)
    assert manifest["state"] == "complete" and manifest["levers"]["world_size"] == 2

    values = dict(zip(recipe[::2], recipe[1::2]))
    one = train(
        dataset_of(arrays),
        out=tmp_path / "one",
        progress=False,
        spec=BN_SPEC,
        epochs=2,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        amp="off",
        seed=int(values["--seed"]),
        threads=1,
    )
    # SGD moves each weight by lr x its gradient, so float32 summation order leaves ~1e-6
    assert weights_gap(load_npz(run / "weights.npz"), load_npz(tmp_path / "one" / "weights.npz")) < 1e-4
    assert json.loads((run / "history.json").read_text())[-1]["loss"] == pytest.approx(
        one.history[-1]["loss"], rel=1e-4
    )


def _nproc_job(tmp_path, data, nproc, epochs):
    command = [
        sys.executable,
        CLI,
        "train",
        "cnn",
        "--nproc",
        str(nproc),
        "--spec",
        SMALL_SPEC,
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--amp",
        "off",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    return subprocess.Popen(
        command, env=environment(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_ctrl_c_saves_rerun_resumes_a_killed_rank_stops_the_job_and_one_process_finishes(tmp_path):
    EPOCHS = 4  # room for a kill mid-epoch after the epoch the Ctrl-C left
    data = tmp_path / "data.npz"
    np.savez(data, **synthetic_arrays(2000))
    run = tmp_path / "run"

    # Ctrl-C (SIGINT to the launcher): every rank finishes its step, rank 0 saves, exit 130
    job = _nproc_job(tmp_path, data, 2, EPOCHS)
    wait_for_epoch(run, 0, job)  # the initial run directory is written
    time.sleep(0.3)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-2000:]
    assert "interrupted; progress saved" in err
    manifest = read_manifest(run)
    assert manifest["state"] == "interrupted"

    # the same command again continues the run; SIGKILL of rank 1 mid-epoch ends the job in seconds
    stopped_at = manifest["epochs_done"]
    job = _nproc_job(tmp_path, data, 2, EPOCHS)
    wait_for_epoch(run, stopped_at + 1, job)
    time.sleep(0.3)
    pid = rank_pid(data, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    # seconds, not the process group's 30-minute timeout a hang would wait for (loaded cores slow it)
    assert time.monotonic() - killed < 60
    assert job.returncode == 1
    assert "continuing it" in err  # the rerun picked the interrupted run up
    assert err.strip().splitlines()[-1] == (
        "mnistlab: error: rank 1 was killed by SIGKILL; the job stopped (the run keeps its last finished "
        "epoch: rerun the same command to resume)"
    )
    manifest = read_manifest(run)
    assert manifest["state"] == "partial" and stopped_at < manifest["epochs_done"] < EPOCHS
    load_npz(run / "checkpoint.npz")  # whole

    # resume with another world size: one process, no torchrun
    assert main(["train", "cnn", "--resume", str(run), "--no-progress"]) == 0
    manifest = read_manifest(run)
    assert manifest["state"] == "complete" and manifest["levers"]["world_size"] == 1
    epochs = range(1, EPOCHS + 1)
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == list(epochs)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch-00{k}.npz" for k in epochs]


@pytest.mark.slow
def test_torchrun_max_restarts_restarts_and_resumes_by_itself(tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, **synthetic_arrays(2000))
    run = tmp_path / "run"
    job = subprocess.Popen(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            CLI,
            "train",
            "cnn",
            "--spec",
            SMALL_SPEC,
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--amp",
            "off",
            "--out",
            str(run),
            "--no-progress",
        ],
        env=environment(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_epoch(run, 1, job)
    time.sleep(0.3)
    os.kill(rank_pid(data, 1), signal.SIGKILL)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    assert "an unfinished run; continuing it" in err
    manifest = read_manifest(run)
    assert manifest["state"] == "complete" and manifest["levers"]["world_size"] == 2
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_the_launcher_names_the_killed_rank_when_a_survivor_ended_first():
    """A survivor ends soon after losing its peer (quietly with LOST_PEER_STATUS, or aborting inside
    gloo: SIGABRT), often before torchrun's agent sees the peer's death; the one line names the rank
    killed from outside, not the survivor, and a rank that failed on its own keeps its status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from mnistlab.cnn.launch import root_failure

    def failure(rank, exitcode, timestamp):
        ended = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file="<N/A>")
        ended.timestamp = timestamp
        return ended

    for survivor in (-int(signal.SIGABRT), distributed.LOST_PEER_STATUS):
        ended = failure(0, survivor, 100)  # the agent saw the survivor first
        killed = failure(1, -int(signal.SIGKILL), 101)
        rank, cause = root_failure(ChildFailedError("job", {0: ended, 1: killed}))
        assert (rank, cause.signal_name()) == (1, "SIGKILL")
        assert root_failure(ChildFailedError("job", {0: ended}))[0] == 0  # a survivor alone is the cause
        failed = failure(1, 1, 101)  # a rank that printed its own error keeps its status
        assert root_failure(ChildFailedError("job", {0: ended, 1: failed}))[1].exitcode == 1
        stopped = failure(2, -int(signal.SIGTERM), 100)  # the agent stopped it after the kill
        assert root_failure(ChildFailedError("job", {0: ended, 1: killed, 2: stopped}))[0] == 1
        killed.timestamp = 99  # a kill seen first
        assert root_failure(ChildFailedError("job", {0: killed, 1: ended}))[0] == 0
