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
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import DiTConfig
from .dit import DiT

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "save_dit", "load_dit", "save_model_dir", "load_model_dir",
           "check_safetensors"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_model_dir(model: nn.Module, config: dict, directory: str | os.PathLike, *, config_name: str,
                   kind: str) -> Path:
    """Write a module's weights (safetensors) and its config fields (JSON) into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model": kind})
    (d / config_name).write_text(json.dumps(config, indent=2) + "\n")
    return d


def load_model_dir(directory: str | os.PathLike, build: Callable[[], nn.Module], *,
                   device: str | torch.device = "cpu") -> nn.Module:
    """The module `build()` makes (on the meta device: no init cost), with the weights of
    `directory`/model.safetensors assigned, strictly."""
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"checkpoint {directory} has no {WEIGHTS_NAME}")
    check_safetensors(weights)
    with torch.device("meta"):
        model = build()  # every tensor comes from the file
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # SafetensorError on cut or flipped bytes: name the file, not a traceback
        raise ValueError(f"{weights} does not load ({type(e).__name__}: {e})") from None
    model.load_state_dict(state, strict=True, assign=True)
    return model


def save_dit(model: DiT, directory: str | os.PathLike) -> Path:
    """Write `model`'s weights and config into `directory` (created if needed)."""
    return save_model_dir(model, model.config.to_dict(), directory, config_name=CONFIG_NAME, kind="patchpack.DiT")


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
    config_path = Path(directory) / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"checkpoint {directory} has no {CONFIG_NAME}")
    try:
        config = DiTConfig.from_dict({**json.loads(config_path.read_text()), **overrides})
    except (ValueError, TypeError, AttributeError) as e:  # bad JSON, unknown or missing fields
        raise ValueError(f"{config_path} is not a DiT config ({type(e).__name__}: {e})") from None
    return load_model_dir(directory, lambda: DiT(config), device=device)
