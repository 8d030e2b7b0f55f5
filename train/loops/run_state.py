"""The run-state schema: what one training checkpoint holds, by name.

Both training loops (the DiT's and the VAE's) write a `RunState`, and everything that
reads a checkpoint (resume, `patchpack generate`, `load_vae`) reads one, so the keys
live here and nowhere else. On disk (checkpoint.py: atomic, pickle-free):

    step_XXXXXXXX/
        model.safetensors   weights           the network the run trains (DiT or VAE)
        config.json         model_config      its config (DiTConfig / VAEConfig), so the directory
                            (vae.json)        loads on its own with load_dit / load_vae
        state.safetensors   every other tensor below
        state.json          step and the tree that names those tensors:
            config          the run's resolved config, as YAML (rebuilds model, flow, data)
            optimizer       AdamW state            scheduler   LR schedule state
            ranks           per rank: {"data": stream state, "rng": generator states (torch,
                            timesteps/dropout, conditioning draws, device noise)}
            ema             EMA weights, keyed "<part>.<name>" for part in TRAINED_PARTS
            text            a trainable text encoder's weights (None when frozen)
            nonfinite       non-finite steps skipped so far
            seen_grid       largest (T', H', W') patch grid seen per axis (RoPE extrapolation)
            world_size      processes that wrote it (a resume needs the same)

In the spirit of torchtitan's CheckpointManager, whose states are named ("model",
"optimizer", "lr_scheduler", "dataloader", "train_state"), not positional.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .checkpoint import (
    CorruptCheckpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)

__all__ = ["TRAINED_PARTS", "RunState", "save_run_state", "load_run_state", "load_resume", "load_weights",
           "ema_part"]

log = logging.getLogger("patchpack.train.loops")

TRAINED_PARTS = ("dit", "text")  # the modules the DiT loop's optimizer and EMA own, by name


@dataclass
class RunState:
    step: int
    config: str  # the run's resolved config (YAML)
    weights: dict[str, Tensor]  # the trained network's state_dict
    optimizer: dict
    scheduler: dict
    ranks: list[dict]  # per rank: {"data": ..., "rng": ...}
    model_config: tuple[str, dict] | None = None  # (file name, fields): config.json or vae.json
    ema: dict[str, Tensor] | None = None
    text: dict[str, Tensor] | None = None
    nonfinite: int = 0
    seen_grid: list[int] | None = None
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # a loop's own named entries
    path: Path | None = None  # the checkpoint directory it was loaded from (not saved)

    def rank(self, rank: int, world_size: int) -> dict:
        """This rank's {"data", "rng"} entry; ValueError when the world size changed."""
        if len(self.ranks) != world_size:
            raise ValueError(f"checkpoint was written by {len(self.ranks)} ranks, resuming with world_size="
                             f"{world_size}: resume with the same number of processes")
        return self.ranks[rank]


_NAMED = ("config", "optimizer", "scheduler", "ranks", "ema", "text", "nonfinite", "seen_grid", "world_size")


def save_run_state(ckpt_dir: str | Path, state: RunState, *, keep: int) -> Path:
    """Write `state` as checkpoint step_<step> in ckpt_dir (atomically), keeping the newest `keep`."""
    tree = {k: getattr(state, k) for k in _NAMED}
    tree.update(state.extra)
    files = {}
    if state.model_config is not None:
        name, fields = state.model_config
        files[name] = json.dumps(fields, indent=2) + "\n"
    return save_checkpoint(ckpt_dir, state.step, model_state=state.weights, state=tree, keep=keep, files=files)


def load_run_state(path: str | Path) -> RunState:
    """Read the checkpoint directory `path` (never unpickles); CorruptCheckpoint if it does not load."""
    step, weights, tree = load_checkpoint(path)
    try:
        if "ranks" not in tree:  # one process, written before per-rank entries existed
            tree["ranks"] = [{"data": tree.pop("data"), "rng": tree.pop("rng")}]
        named = {k: tree.pop(k) for k in _NAMED if k in tree}
        return RunState(step=step, weights=weights, **named, extra=tree, path=Path(path))
    except (KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpoint(f"{Path(path) / 'state.json'} lacks the run-state entries ({type(e).__name__}: {e})") from None


def load_resume(resume: str, ckpt_dir: str | Path) -> RunState | None:
    """A loop's `resume` option -> the state to continue from, or None to start fresh.

    "auto": the newest checkpoint in ckpt_dir that loads. A corrupt one (CorruptCheckpoint:
    a checksum or parse failure) is skipped with a warning naming it, and the one before
    is tried; when none loads, CorruptCheckpoint lists them all. A path: that checkpoint,
    or CorruptCheckpoint naming its bad file. "none": None."""
    if resume != "auto":
        path = resolve_resume(resume, ckpt_dir)
        return None if path is None else load_run_state(path)
    bad: list[str] = []
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_run_state(path)
        except CorruptCheckpoint as e:
            log.warning("checkpoint %s does not load, trying the one before it: %s", path.name, e)
            bad.append(str(e))
            continue
        if bad:
            log.warning("resuming from %s (step %d), not from the newest checkpoint, which is corrupt",
                        path, state.step)
        return state
    if bad:
        raise CorruptCheckpoint(f"no checkpoint in {ckpt_dir} loads ({'; '.join(bad)}); "
                                "set loop.resume=none to start over")
    return None


def ema_part(ema: dict[str, Tensor], part: str) -> dict[str, Tensor]:
    """The EMA entries of one trained part ("dit" or "text"), its prefix stripped."""
    if part not in TRAINED_PARTS:
        raise ValueError(f"part={part!r}, expected one of {TRAINED_PARTS}")
    prefix = f"{part}."
    return {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}


def load_weights(module, weights: dict[str, Tensor], state: RunState, what: str = "weights") -> None:
    """module.load_state_dict(weights), strictly; a mismatch is a ValueError naming the checkpoint
    (a resume with another model config), not a RuntimeError traceback."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"checkpoint {state.path}: its {what} do not fit this run's model ({first}); resume "
                         "with the config it was written with, or set loop.resume=none") from None
