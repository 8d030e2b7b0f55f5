"""patchpack.train.parallel: processes and the knobs applied to a built model from outside it.

distributed.py  the process group under torchrun, and the few collectives the loops use
                (any_rank, sum_ranks, gather_to_main, barrier)
wrap.py         DDP / FSDP2 wrapping, activation checkpointing, torch.compile per block,
                autocast precision, and full/sharded tensor conversion for checkpoints
"""

from .distributed import (
    DistInfo,
    any_rank,
    barrier,
    close_distributed,
    gather_to_main,
    init_distributed,
    sum_ranks,
)
from .wrap import (
    apply_compile,
    apply_grad_checkpointing,
    autocast,
    autocast_dtype,
    check_parallel,
    check_precision,
    full_tensors,
    local_norm,
    shard_like,
    shard_optimizer_state,
    wrap_data_parallel,
)

__all__ = [
    "DistInfo",
    "any_rank",
    "apply_compile",
    "apply_grad_checkpointing",
    "autocast",
    "autocast_dtype",
    "barrier",
    "check_parallel",
    "check_precision",
    "close_distributed",
    "full_tensors",
    "gather_to_main",
    "init_distributed",
    "local_norm",
    "shard_like",
    "shard_optimizer_state",
    "sum_ranks",
    "wrap_data_parallel",
]
