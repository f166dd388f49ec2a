"""Data-parallel training of one model over several processes, as launched by ``torchrun``.

    torchrun --nproc_per_node=4 -m inversion.pipeline run --params paper --only layers:mnist

Every process (a *rank*) runs the same plan. For a stage that trains a model (``@stage(...,
data_parallel=True)``), every rank runs the stage's code and ``inversion.training.fit`` trains through
``torch.nn.parallel.DistributedDataParallel``: each step's global batch (the batch of the single-process
run, ``TrainConfig.batch_size``) is cut into equal shards, one per rank, and DDP averages the gradients, so
the updates -- and the learning-rate schedule, which counts steps -- are those of the single-process run
(up to the order of float additions; dropout masks are drawn per rank, so they differ from the
single-process masks, with the same distribution). Any other stage is computed by rank 0 alone while the
others wait. Rank 0 alone writes: checkpoints, the result directory, logs. Backend: nccl on GPUs (rank r
uses ``cuda:<LOCAL_RANK>``), gloo on CPU.

This module holds the process group and the few collective steps the cache and the training loop take
(who writes, a barrier, rank 0's decision sent to all); it knows nothing of stages or models.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Group", "from_environment", "active", "data_parallel", "barrier", "broadcast", "shard"]

# How long a rank waits for the others at a collective step. Ranks wait at a barrier while rank 0 computes
# a stage alone (sampling, evaluation), which on the paper set takes far longer than torch's 30 minutes.
WAIT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" else torch.device("cpu")


def from_environment(device: str) -> Group | None:
    """Join the process group torchrun set up (its RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT variables);
    None when this process was not started by torchrun, or is its only process.

    ``device`` is the run's device type ("cpu" or "cuda"): nccl on cuda (each rank on ``cuda:LOCAL_RANK``),
    gloo on cpu.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start data-parallel runs "
                         "with torchrun --nproc_per_node=N (it sets them), or unset WORLD_SIZE")
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("a data-parallel run on cuda needs GPUs, and torch sees none; use --device cpu (gloo)")
    backend = "nccl" if device_type == "cuda" else "gloo"
    group = Group(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]), backend)
    if backend == "nccl":
        torch.cuda.set_device(group.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=group.rank, world_size=world_size, timeout=WAIT)
    return group


_ACTIVE: Group | None = None


def active() -> Group | None:
    """The group ``fit`` trains with right now: set by ``data_parallel`` while a data-parallel stage runs on
    every rank, None otherwise (a stage rank 0 computes alone trains on one process, as usual)."""
    return _ACTIVE


@contextlib.contextmanager
def data_parallel(group: Group | None):
    """Within this block, ``inversion.training.fit`` shards its batches over ``group`` (no-op for None)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, group
    try:
        yield group
    finally:
        _ACTIVE = previous


def barrier(group: Group | None) -> None:
    """Wait until every rank gets here (no-op for None)."""
    if group is not None:
        dist.barrier()


def broadcast(value, group: Group | None):
    """Rank 0's ``value``, on every rank (a picklable object; no-op for None)."""
    if group is None:
        return value
    box = [value if group.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(indices: torch.Tensor, group: Group | None) -> torch.Tensor:
    """This rank's equal share of a global batch's indices (all of them for None)."""
    if group is None:
        return indices
    if len(indices) % group.world_size:
        raise ValueError(f"a global batch of {len(indices)} does not split into {group.world_size} equal shards; "
                         f"choose a batch_size divisible by the number of processes (torchrun --nproc_per_node)")
    per = len(indices) // group.world_size
    return indices[group.rank * per : (group.rank + 1) * per]
