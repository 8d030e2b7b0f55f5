"""GPU knobs applied to an already-built model from the outside (as torchtitan does):
activation checkpointing and torch.compile per DiT block, autocast precision, and the
data-parallel wrapper. Model code knows nothing of them, and none of them renames a
parameter, so checkpoints load the same with or without any knob.

Reference: pytorch/torchtitan `parallelize` (apply_ac, apply_compile, apply_ddp/fsdp),
torch.distributed.fsdp.fully_shard (FSDP2).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .distributed import DistInfo


def apply_grad_checkpointing(model: nn.Module) -> int:
    """Recompute each DiT block's activations in backward instead of storing them.

    Costs about one extra forward per step and saves the blocks' activations (the bulk
    of memory at long max_len). Patches each block's `forward` on the instance, so the
    state_dict keys stay `blocks.N.*`. Returns the number of blocks wrapped.
    """
    blocks = _blocks(model)
    for block in blocks:
        if getattr(block, "_patchpack_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kw):
            # non-reentrant: works with kwargs, NamedTuple inputs and torch.compile
            return checkpoint(_inner, *args, use_reentrant=False, **kw)

        block.forward = forward
        block._patchpack_checkpointed = True
    return len(blocks)


def apply_compile(model: nn.Module, *, backend: str = "inductor") -> int:
    """torch.compile each DiT block in place (`nn.Module.compile`: keys unchanged).

    Per block rather than the whole model: the blocks are identical, so one compiled
    graph is reused depth times, and packing's varying segment counts only recompile a
    block (dynamic shapes), not the embedding and loss glue. backend="eager" traces
    without generating code (tests of the plumbing).
    """
    blocks = _blocks(model)
    for block in blocks:
        block.compile(dynamic=True, backend=backend)
    return len(blocks)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList to wrap")
    return blocks


def check_precision(precision: str) -> None:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"loop.precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """loop.precision -> the autocast dtype, or None for plain fp32.

    auto: bf16 on CUDA, fp32 on CPU. bf16 on CPU runs (autocast works there) but is
    usually slower than fp32 on CPU, so it is allowed only when asked, with a warning.
    """
    check_precision(precision)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        warnings.warn("loop.precision=bf16 on CPU: autocast runs, but usually slower than fp32", stacklevel=2)
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def check_parallel(parallel: str) -> None:
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"loop.parallel must be 'ddp' or 'fsdp', got {parallel!r}")


def wrap_data_parallel(module: nn.Module, info: DistInfo, *, parallel: str,
                       blocks: nn.ModuleList | None = None) -> nn.Module:
    """Data parallelism over the ranks for `module`; the module itself on one rank.

    ddp: DistributedDataParallel, full replicas, gradients averaged by all-reduce.
    fsdp: FSDP2 `fully_shard`, each of `blocks` a unit and `module` the root: parameters,
    gradients and optimizer state are sharded over ranks (params become DTensors), and
    gradients are averaged by reduce-scatter. Apply it after grad checkpointing and
    compile, and build the optimizer after it (torchtitan's order).
    """
    check_parallel(parallel)
    if not info.enabled:
        return module
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in blocks or ():
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    # no per-forward buffer sync: the DiT's buffers (RoPE tables) are constants, equal on
    # every rank; a broadcast each step would only cost time. (`forward_sync_buffers` is
    # the newer spelling of `broadcast_buffers`; older torch only knows the latter.)
    import inspect

    quiet = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    sync = {"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}
    return DDP(module, device_ids=ids, **sync)


# --------------------------------------------------------------------------- sharded <-> full state
# Checkpoints always hold full tensors, whatever `parallel` wrote them, so a run can resume
# under ddp, fsdp or one process alike (with the same world size for the data state).


def _is_dtensor(x) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def full_tensors(tree):
    """A copy of `tree` with every DTensor gathered to a full tensor. Collective under
    FSDP: every rank calls it on the same tree, in the same order."""
    if isinstance(tree, dict):
        return {k: full_tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(full_tensors(v) for v in tree)
    if isinstance(tree, torch.Tensor) and _is_dtensor(tree):
        return tree.full_tensor()
    return tree


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` (the same DTensor placements), or as is for a plain tensor."""
    if not _is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer state_dict -> one whose moments match the (sharded) parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = {**state, "state": {}}
    for idx, per_param in state["state"].items():
        p = params[int(idx)]
        out["state"][idx] = {k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                             for k, v in per_param.items()}
    return out


def local_norm(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP)."""
    return float(norm.full_tensor() if _is_dtensor(norm) else norm)
