"""Data-parallel CNN training over processes (torchrun, DistributedDataParallel).

A process started by torchrun (or ``mnistlab train cnn --nproc N``, see launch.py) joins the
job's process group: gloo for CPU tensors, NCCL for CUDA tensors where CUDA is available. The
trainer then keeps every option's meaning:

* ``--batch-size`` is the global batch. Every rank draws the same seeded permutation of the epoch
  and takes its contiguous share of each global batch (``share``); the shares differ by at most
  one image and cover the batch exactly once (no DistributedSampler padding).
* Each rank scales its loss by its share of the global batch times the world size, so the
  averaged gradients DDP produces are the global batch's mean-loss gradients (``loss_weight``).
* Batch norm uses the whole global batch's statistics (SyncBatchNorm on GPUs, GlobalBatchNorm
  on CPUs, where torch's SyncBatchNorm does not run).
* Metrics are summed across ranks (``sum_``); evaluation splits the images across ranks, each
  counted once.
* Rank 0 alone reads and writes the run directory; the others wait at a barrier
  (``main_writes``, ``from_main``), so a run on rank 0's machine needs no shared filesystem.
* A stop (Ctrl-C, SIGTERM) or a NaN loss on any rank is agreed on by all at the same step
  (``StepAgreement``, inside the gradient all-reduce), so no rank waits in a collective for one
  that left.

One process outside torchrun never creates a process group; every helper here is then a no-op.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, MnistlabError, RunError
from .config import TrainConfig
from .levers import Levers, choose_levers
from .spec import Spec

T = TypeVar("T")

# What torchrun puts in each worker's environment.
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# Set by launch.py for its workers: the launcher reports a lost rank in one line, so the
# survivors leave without repeating it.
LAUNCHER_REPORTS = "MNISTLAB_LAUNCHER_REPORTS"
# The exit status of such a survivor: the launcher tells it from a rank that failed on its own.
LOST_PEER_STATUS = 75


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job: one process alone is rank 0 of 1, with no backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # None: no process group (one process outside torchrun)

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ranks = Ranks()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def current() -> Ranks:
    """This process's place in the job, joining the process group first when torchrun started it."""
    if not _ranks.active and launched_by_torchrun():
        return join()
    return _ranks


def join() -> Ranks:
    """Join torchrun's process group (once per process): rendezvous from its environment variables.

    CUDA tensors go over NCCL and everything else (objects, CPU tensors, barriers) over gloo, so
    the backend does not depend on the device a run chooses later.
    """
    global _ranks
    if _ranks.active:
        return _ranks
    env = {name: int(os.environ[name]) for name in _TORCHRUN_VARIABLES}
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(env["LOCAL_RANK"] % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            store=_attempt_store(env),
            rank=env["RANK"],
            world_size=env["WORLD_SIZE"],
            timeout=timedelta(minutes=30),
        )
    _ranks = Ranks(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], backend)
    return _ranks


def _attempt_store(env: dict[str, int]) -> dist.Store:
    """torchrun's key-value store with a key prefix of this attempt. The store outlives a restart
    (--max-restarts), and without the prefix a restarted rank can read the address a dead rank
    published in the attempt before and fail to connect (pytorch/pytorch#135712, #167288)."""
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        host,
        port,
        env["WORLD_SIZE"],
        is_master=not agent_hosts and env["RANK"] == 0,
        timeout=timedelta(minutes=30),
        multi_tenant=True,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mnistlab/attempt-{attempt}", store)


def all_arrived() -> None:
    """Wait until every rank reaches the end of the command: no rank then leaves (closing its gloo
    connections or, on rank 0, the rendezvous store when torchrun does not host it) while another
    still takes part in a collective, and gloo finishes all earlier work before the barrier."""
    if _ranks.active:
        dist.barrier()


# Whether this process has left a process group. gloo's worker threads outlive
# destroy_process_group: a group that DDP used stays alive (torch 2.13 never frees its reducer), so
# they cannot be joined. A worker that still releases a Python object (a comm hook's callback, a
# tensor of the last collective) once the interpreter finalizes dies taking the GIL, which ends the
# process in std::terminate (SIGABRT, "terminate called without an active exception"); the CLI
# therefore ends a rank's process without finalizing (cli.end_rank_process).
left_group = False


def leave() -> None:
    """Leave the process group (the end of a distributed command, after ``all_arrived`` when it
    succeeded)."""
    global _ranks, left_group
    if dist.is_initialized():
        dist.destroy_process_group()
        left_group = True
    _ranks = Ranks()


# ----------------------------------------------------------------------------------------------
# Placement: devices, threads, the network


def device_for(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank trains on its LOCAL_RANK GPU; CPU ranks share the CPU."""
    if ranks.active and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    return device


def threads_per_rank(ranks: Ranks) -> int:
    """This rank's share of the cores other processes leave idle (the ranks on one machine split
    them evenly): more threads than cores make OpenMP's barriers crawl."""
    from ..mlp.threads import auto_threads as idle_cores

    return max(1, idle_cores() // ranks.local_world_size)


def levers_for(
    config: TrainConfig, device: torch.device, spec: Spec, ranks: Ranks, recorded: dict[str, Any] | None
) -> Levers:
    """The levers of this process (``recorded``: a resumed run's, see choose_levers). Alone:
    ``choose_levers``. In a job, rank 0 alone chooses, for one rank's share of the batch and
    threads, and every rank takes its choice (all ranks run the same arithmetic: precision,
    layout, Winograd; and the CPU probe runs once, not once per rank against the others);
    each rank keeps its own share of its machine's cores (``--threads`` when given). DDP replaces
    the thread split, and the CUDA graph (DDP's gradient hooks run outside a captured step)."""
    if not ranks.active:
        return choose_levers(config, device, spec, recorded)
    threads = config.threads or (threads_per_rank(ranks) if device.type == "cpu" else torch.get_num_threads())
    one_rank = replace(config, threads=threads, batch_size=max(1, config.batch_size // ranks.world_size))
    chosen = from_main(lambda: choose_levers(one_rank, device, spec, recorded, split_batch=False))
    return replace(chosen, threads=threads, data_parallel=1, cuda_graphs=False, world_size=ranks.world_size)


def check_batch(batch_size: int, ranks: Ranks) -> None:
    if ranks.active and batch_size < ranks.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and smaller than the {ranks.world_size} ranks; "
            f"give at least {ranks.world_size} (one image per rank per step)"
        )


def data_parallel(net: nn.Module, device: torch.device, ranks: Ranks, **options: Any) -> nn.Module:
    """The network as the training steps call it: itself alone, or wrapped in DDP with its batch
    norms turned into global-batch ones. ``options``: more DistributedDataParallel arguments
    (benchmarks/bench_ddp_steps.py measures them)."""
    if not ranks.active:
        return net
    _sync_batch_norms(net, nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm)
    # Batch norms' running statistics come from the global batch, equal on every rank: DDP's
    # broadcast of buffers before each forward would add a collective per step for nothing.
    buffers_agree = all(
        isinstance(module, nn.modules.batchnorm._BatchNorm) or not list(module.buffers(recurse=False))
        for module in net.modules()
    )
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers (now deprecated, with a warning) to forward_sync_buffers;
    # the cnn extra accepts older torch, which knows only the old name
    sync_name = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        **{sync_name: not buffers_agree},
        **options,
    )


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, summed over all ranks
    with autograd-aware all-reduces (two-pass mean and variance, as torch's own batch norm).
    torch's SyncBatchNorm runs on GPUs only; this is its CPU twin. Same parameter and buffer names
    as nn.BatchNorm1d/2d, so weights and checkpoints do not change."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / max(1, channels), dtype=x.dtype, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        n = sums[channels]
        mean = sums[:channels] / n
        centered = x - mean.view(shape)
        var = _SumOverRanks.apply((centered * centered).sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y


class _SumOverRanks(torch.autograd.Function):
    """A sum over ranks that autograd goes back through: each rank's input gets the sum of the
    gradients all ranks' outputs received."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def _sync_batch_norms(net: nn.Module, kind: type[nn.modules.batchnorm._BatchNorm]) -> None:
    """Turn every batch norm into ``kind`` in place: the same module objects (the network keeps
    references to them for its fused conv-pool path), parameters and buffers."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) is not kind:
            module.__class__ = kind
            if kind is nn.SyncBatchNorm:
                module.process_group = None  # the whole job


# ----------------------------------------------------------------------------------------------
# Batches, losses, metrics


def share(items: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's contiguous share of a global batch (or of an evaluation set): the shares differ
    by at most one item and, in rank order, are the batch itself."""
    if not ranks.active:
        return items
    return items.tensor_split(ranks.world_size)[ranks.rank]


def loss_weight(local: int, global_: int, ranks: Ranks) -> float:
    """Factor on a rank's mean loss so that DDP's average of the ranks' gradients is the gradient
    of the global batch's mean loss: (local / global) * world_size."""
    return local / global_ * ranks.world_size


def sum_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks, in place."""
    if _ranks.active:
        for tensor in tensors:
            dist.all_reduce(tensor)


AGREE_EVERY = 50


def agree_every(sync_every: int) -> int:
    """Steps between agreements: every step where the loop reads the loss anyway (CPU), at most
    AGREE_EVERY on GPUs, where each agreement makes the host wait for the device."""
    return min(sync_every, AGREE_EVERY)


class StepAgreement:
    """Whether any rank was asked to stop or saw a NaN/inf loss, agreed on by every rank at the same
    step without a collective of its own: two flags ride along in the step's gradient all-reduce (a
    DDP communication hook on the bucket reduced last, averaging gradients as DDP's own hook does).
    A step is one collective, the rendezvous in which the ranks of a busy machine wait for each other."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel, stop: Any, loss_sum: torch.Tensor):
        self.stop = stop
        self.loss_sum = loss_sum  # this rank's running loss, the step's own loss added before its backward
        self.flags = torch.zeros(2, device=loss_sum.device)  # (stop asked, loss not finite) over ranks
        self.world_size = dist.get_world_size()
        ddp.register_comm_hook(None, self._all_reduce)

    def _all_reduce(self, _state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
        grads = bucket.buffer().div_(self.world_size)
        if not bucket.is_last():
            return dist.all_reduce(grads, async_op=True).get_future().then(lambda fut: fut.value()[0])
        stop = torch.full((1,), float(self.stop.pending), dtype=grads.dtype, device=grads.device)
        not_finite = torch.isfinite(self.loss_sum).logical_not().to(grads.dtype).reshape(1)
        packed = torch.cat([grads, stop, not_finite])

        def unpack(fut: Any) -> torch.Tensor:
            total = fut.value()[0]
            self.flags = total[-2:]
            return grads.copy_(total[:-2])  # back into the bucket, where DDP reads the result

        return dist.all_reduce(packed, async_op=True).get_future().then(unpack)

    def diverged(self) -> bool:
        """After a step: whether any rank's loss is NaN/inf; a stop any rank was asked for becomes
        ``stop.requested`` on all of them."""
        stop, not_finite = self.flags.tolist()
        if stop > 0:
            self.stop.requested = True
        return not_finite > 0


def seed_rank_stream(seed: int, global_step: int, ranks: Ranks) -> None:
    """Dropout and augmentation draw from torch's global generator: ranks other than 0 get their
    own stream (from seed, rank and the step they start at), so the shares are not masked alike.
    Rank 0 keeps the run's stream, which checkpoints save."""
    if ranks.active and ranks.rank > 0:
        torch.manual_seed(hash((seed, ranks.rank, global_step)) & 0x7FFF_FFFF_FFFF)


# ----------------------------------------------------------------------------------------------
# Rank 0 reads and writes; the others wait


def _broadcast(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` on rank 0, its result (or its error) handed to every rank."""
    if not _ranks.active:
        return read(*args)
    result: Any = None
    error: MnistlabError | None = None
    if _ranks.is_main:
        try:
            result = read(*args)
        except MnistlabError as exc:
            error = exc
    result, error = _broadcast((result, error))
    if error is not None:
        raise error
    return result


def main_writes(write: Callable[[], None]) -> None:
    """``write()`` on rank 0 while the others wait; a failure there stops every rank."""
    if not _ranks.active:
        write()
        return
    message = None
    if _ranks.is_main:
        try:
            write()
        except MnistlabError as exc:
            message = str(exc)
    message = _broadcast(message)
    if message is not None:
        if _ranks.is_main:
            raise RunError(message)
        raise RunError(f"rank 0 could not write the run: {message}")


def local_main_first(load: Callable[[], T]) -> T:
    """``load()`` on each machine's first rank, then on the others: the first fills the machine's
    dataset cache (a download at most once per machine), the others read it."""
    if not _ranks.active:
        return load()
    value: Any = None
    error = None
    if _ranks.local_rank == 0:
        try:
            value = load()
        except MnistlabError as exc:
            error = exc
    errors: list[Any] = [None] * _ranks.world_size
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return value if _ranks.local_rank == 0 else load()


@contextlib.contextmanager
def lost_ranks() -> Iterator[None]:
    """A collective that fails because another rank died (killed, crashed, its machine gone)
    becomes one line. Under ``--nproc`` the launcher names the dead rank, and the survivors stay quiet."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if not _ranks.active or not _is_lost_peer(exc):
            raise
        if os.environ.get(LAUNCHER_REPORTS):
            raise SystemExit(LOST_PEER_STATUS) from None
        raise RunError(
            f"rank {_ranks.rank}: lost contact with another rank (it died, or the network between them "
            "failed); the run keeps its last finished epoch: rerun the same command to resume"
        ) from None


def _is_lost_peer(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(
        sign in text for sign in ("connection closed by peer", "connection reset", "broken pipe", "gloo")
    )
