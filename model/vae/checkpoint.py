"""VAE checkpoints without pickle: safetensors weights + the VAEConfig as JSON.

A VAE directory holds model.safetensors + vae.json (VAEConfig fields): `save_vae` writes
one, and so does every checkpoint of `patchpack train-vae`, beside its training state.
Safetensors + JSON only, so loading never executes code from the files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from patchpack.model.checkpoint import WEIGHTS_NAME, check_safetensors

from .model import CausalVAE, VAEConfig

__all__ = ["VAE_CONFIG_NAME", "save_vae", "load_vae", "vae_config_of"]

VAE_CONFIG_NAME = "vae.json"


def save_vae(vae: CausalVAE, directory: str | os.PathLike) -> Path:
    """Write `vae`'s weights and config into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model": "patchpack.CausalVAE"})
    (d / VAE_CONFIG_NAME).write_text(json.dumps(vae.config.to_dict(), indent=2) + "\n")
    return d


def vae_config_of(directory: str | os.PathLike) -> VAEConfig:
    """The VAEConfig stored in a VAE directory (an export or a training checkpoint)."""
    d = Path(directory)
    if not (d / VAE_CONFIG_NAME).is_file():
        raise ValueError(f"{d} has no {VAE_CONFIG_NAME}: not a VAE directory (an exported VAE or a "
                         "train-vae checkpoint)")
    return VAEConfig.from_dict(json.loads((d / VAE_CONFIG_NAME).read_text()))


def load_vae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> CausalVAE:
    """Rebuild the VAE saved in `path` (see the module docstring), in eval mode."""
    d = Path(path)
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"VAE checkpoint {d} has no {WEIGHTS_NAME}")
    config = vae_config_of(d)
    check_safetensors(weights)
    with torch.device("meta"):
        vae = CausalVAE(config)  # no init cost: every tensor comes from the file
    vae.load_state_dict(load_file(str(weights), device=str(device)), strict=True, assign=True)
    return vae.eval()
