"""Training in several processes (one per GPU, or several on CPU) with ``torch.distributed``.

``shoeseg train`` runs unchanged under torchrun::

    torchrun --standalone --nproc-per-node 4 -m shoeseg_app train --data shoes.json --out runs/shoes --profile gpu

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in each process; :func:`shoeseg.train.train` reads
them (:meth:`DistEnv.from_env`) and, when ``WORLD_SIZE`` > 1, joins a process group (NCCL on CUDA, gloo on
CPU), wraps the model in ``DistributedDataParallel`` and gives each process its own share of the images
(``DistributedSampler``, reshuffled every pass). Process ``LOCAL_RANK`` uses GPU ``cuda:LOCAL_RANK``.

* ``ims_per_batch`` is the **global** batch, as detectron2's ``SOLVER.IMS_PER_BATCH``: each of N processes
  takes ``ims_per_batch / N`` images per iteration (it must divide evenly), so a recipe (batch, learning rate,
  iterations) trains the same whether it runs on one GPU or on several; more GPUs make it faster, not different.
* The losses logged are the mean over the processes (one all-reduce of six numbers per iteration), so every
  process sees a NaN at the same iteration and stops together.
* Only rank 0 writes: ``metrics.jsonl``, ``split.json``, the loss plot, the evaluation and the checkpoint; it
  alone returns a :class:`~shoeseg.train.TrainResult`. The other ranks wait at a barrier after the last
  iteration, log what they did and return ``None``.
* Batch norm: pretrained starts (COCO, ImageNet, and fine-tunes of those) use frozen batch norm, which has no
  batch statistics to synchronise, so no SyncBatchNorm is needed. A start from random weights uses plain batch
  norm: each process normalises over its own images, and rank 0's running statistics are broadcast to the
  others at each forward pass (DDP's ``broadcast_buffers``).
* A process that fails ends the run: torchrun stops the others.

Example:
    >>> DistEnv.from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    DistEnv(rank=1, local_rank=1, world_size=2)
    >>> per_process_batch(4, 2)
    2
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from shoeseg.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a run: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """More than one process: a process group, DDP and sharded data."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files and reports."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistEnv:
        """Reads torchrun's ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (absent: one process).

        Raises:
            ValueError: a value that is not an integer, or a rank outside ``0 .. WORLD_SIZE - 1``.
        """
        env = os.environ if env is None else env

        def read(name: str, default: int) -> int:
            raw = (env.get(name) or "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        local = read("LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}: expected "
                             "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
        return cls(rank=rank, local_rank=local, world_size=world)


def per_process_batch(ims_per_batch: int, world_size: int) -> int:
    """Images per process and iteration: the global batch ``ims_per_batch`` split over ``world_size``.

    Raises:
        ValueError: the batch does not divide evenly (or is smaller than the number of processes).
    """
    if ims_per_batch % world_size:
        raise ValueError(f"ims_per_batch={ims_per_batch} is the global batch and must be a multiple of the "
                         f"{world_size} processes (each takes an equal share); use e.g. --ims-per-batch "
                         f"{world_size * max(1, round(ims_per_batch / world_size))}")
    return ims_per_batch // world_size


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(spec: str | torch.device | None, env: DistEnv) -> torch.device:
    """The device of this process: ``resolve_device(spec)``, with ``cuda`` meaning ``cuda:LOCAL_RANK`` in a
    run of several processes (an explicit ``cuda:N`` is kept as given).

    Raises:
        ValueError: more processes on this machine than GPUs.
    """
    device = resolve_device(spec)
    if device.type == "cuda":
        if env.enabled and device.index is None:
            count = torch.cuda.device_count()
            if env.local_rank >= count:
                raise ValueError(f"LOCAL_RANK {env.local_rank} has no GPU: {count} visible here; start at most "
                                 f"{count} processes per machine (--nproc-per-node)")
            device = torch.device("cuda", env.local_rank)
        if env.enabled:
            torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Joins the default process group for the run (only when ``WORLD_SIZE`` > 1) and leaves it at the end.

    A group that the caller set up already is used as it is and left for the caller to destroy.

    Raises:
        ValueError: an existing group whose size is not ``WORLD_SIZE``.
    """
    import torch.distributed as dist

    created = False
    if env.enabled:
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed")
        if dist.is_initialized():
            if dist.get_world_size() != env.world_size:
                raise ValueError(f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says "
                                 f"{env.world_size}")
        else:
            dist.init_process_group(backend_for(device), rank=env.rank, world_size=env.world_size)
            created = True
            log.info("rank %d/%d joined the %s process group on %s", env.rank, env.world_size,
                     backend_for(device), device)
    try:
        yield
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def barrier(env: DistEnv, device: torch.device) -> None:
    """Waits for every process (no-op in a single process)."""
    if not env.enabled:
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl" and device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Lets ``LOCAL_RANK`` 0 of each machine run the block first (a download into a shared cache), then the rest."""
    if not env.enabled:
        yield
        return
    if env.local_rank != 0:
        barrier(env, device)
    try:
        yield
    finally:
        if env.local_rank == 0:
            barrier(env, device)


def mean_over_processes(env: DistEnv) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function averaging a tensor over the processes (an all-reduce); ``None`` in a single process."""
    if not env.enabled:
        return None
    import torch.distributed as dist

    def mean(values: torch.Tensor) -> torch.Tensor:
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / env.world_size

    return mean


def per_rank(env: DistEnv, device: torch.device, values: list[float]) -> list[list[float]]:
    """Every process's ``values`` (same length on each), in rank order; a collective, so also a barrier."""
    if not env.enabled:
        return [list(values)]
    import torch.distributed as dist

    table = torch.zeros(env.world_size, len(values), dtype=torch.float64, device=device)
    table[env.rank] = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(table, op=dist.ReduceOp.SUM)
    return table.cpu().tolist()


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when several processes train; the model itself otherwise.

    Rank 0's buffers are broadcast at each forward pass only when the model has batch norm that updates
    running statistics (random-weight starts); frozen batch norm has nothing to keep in step.
    """
    if not env.enabled:
        return model
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.parallel import DistributedDataParallel

    live_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    # torch 2.14 renamed broadcast_buffers (which still works, with a warning) to forward_sync_buffers
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": live_bn}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **sync)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return getattr(model, "module", model)
