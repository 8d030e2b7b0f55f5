"""DiT checkpoints without pickle: safetensors weights + the DiTConfig as JSON.

A checkpoint is a directory:
    model.safetensors   the state_dict (safetensors: a JSON header + raw tensor bytes)
    config.json         DiTConfig fields, so loading rebuilds the exact model (as nanoGPT
                        stores model_args)
Loading reads only these two formats, so it never executes code from the file; a pickle
(or torch.save zip) handed in instead is refused with a ValueError before any parsing.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import DiTConfig
from .dit import DiT

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "save_dit", "load_dit", "check_safetensors"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_dit(model: DiT, directory: str | os.PathLike) -> Path:
    """Write `model`'s weights and config into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model": "patchpack.DiT"})
    (d / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return d


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ValueError unless `path` starts like a safetensors file (8-byte header size, '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if len(head) < 9:
        raise ValueError(f"{path}: {size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or n + 8 > size:
        kind = "a pickle" if head[:1] == b"\x80" else "a zip (torch.save)" if head[:2] == b"PK" else "not safetensors"
        raise ValueError(f"{path} is {kind}, refusing to load it: checkpoints are safetensors, never unpickled")


def load_dit(directory: str | os.PathLike, *, device: str | torch.device = "cpu", **overrides) -> DiT:
    """Rebuild the DiT saved in `directory`. overrides: config fields to change at load time
    that do not touch weights (e.g. attn_backend="cpu", rope_extrapolation="ntk")."""
    d = Path(directory)
    weights, config_path = d / WEIGHTS_NAME, d / CONFIG_NAME
    for p in (weights, config_path):
        if not p.is_file():
            raise ValueError(f"checkpoint {d} has no {p.name}")
    check_safetensors(weights)
    config = DiTConfig.from_dict({**json.loads(config_path.read_text()), **overrides})
    with torch.device("meta"):
        model = DiT(config)  # no init cost: every tensor comes from the file
    state = load_file(str(weights), device=str(device))
    model.load_state_dict(state, strict=True, assign=True)
    return model
