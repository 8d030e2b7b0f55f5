"""torchrun plumbing: the process group from the environment, and the few collectives
the training loop needs beyond DDP's gradient all-reduce.

torchrun (torch.distributed.run) starts one process per device and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each; `init_distributed`
reads them with the env:// rendezvous. Without WORLD_SIZE (or with WORLD_SIZE=1) the
run is a plain single process and every collective here is a no-op.

Backends: NCCL on CUDA, gloo on CPU. The loop's small host-side agreements (stop
flags, metric sums, per-rank data state for checkpoints) always go over a gloo group,
so they never put a tensor on the GPU or add a device sync.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this call created the process group, so `close_distributed` ends it
    cpu_group: Any = None  # gloo group for host-side collectives; None when world_size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def init_distributed(*, device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join (or start) the process group torchrun describes; a single process otherwise.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    An already initialised default group is reused (and left open at the end).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = _pick_device(device, local)
        cpu_group = _cpu_group() if world > 1 else None
        return DistInfo(rank, world, local, dev, owns_group=False, cpu_group=cpu_group)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, _pick_device(device, 0))
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} are not set: launch with torchrun "
                         "(see docs/training.md)")
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = _pick_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev, owns_group=True, cpu_group=_cpu_group())


def _cpu_group():
    return dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def close_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def any_rank(info: DistInfo, flags: list[bool]) -> list[bool]:
    """Element-wise OR of `flags` over ranks: every rank takes the same branch."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return [bool(v) for v in t.tolist()]


def sum_ranks(info: DistInfo, values: list[float]) -> list[float]:
    """Sum of each value over ranks (float64 on the host)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=info.cpu_group)
    return t.tolist()


def gather_to_main(info: DistInfo, obj: Any) -> list[Any] | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere.

    Pickled in transit only (process to process), never on disk; checkpoints stay
    pickle-free. Costs rank 0 the memory of every rank's object at once.
    """
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0, group=info.cpu_group)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier(group=info.cpu_group)
