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

from ..checkpoint import load_model_dir, save_model_dir
from .model import CausalVAE, VAEConfig

__all__ = ["VAE_CONFIG_NAME", "save_vae", "load_vae", "vae_config_of"]

VAE_CONFIG_NAME = "vae.json"


def save_vae(vae: CausalVAE, directory: str | os.PathLike) -> Path:
    """Write `vae`'s weights and config into `directory` (created if needed)."""
    return save_model_dir(vae, vae.config.to_dict(), directory, config_name=VAE_CONFIG_NAME,
                          kind="patchpack.CausalVAE")


def vae_config_of(directory: str | os.PathLike) -> VAEConfig:
    """The VAEConfig stored in a VAE directory (an export or a training checkpoint)."""
    d = Path(directory)
    if not (d / VAE_CONFIG_NAME).is_file():
        raise ValueError(f"{d} has no {VAE_CONFIG_NAME}: not a VAE directory (an exported VAE or a "
                         "train-vae checkpoint)")
    try:
        return VAEConfig.from_dict(json.loads((d / VAE_CONFIG_NAME).read_text()))
    except (ValueError, TypeError, AttributeError) as e:  # bad JSON, unknown or missing fields
        raise ValueError(f"{d / VAE_CONFIG_NAME} is not a VAE config ({type(e).__name__}: {e})") from None


def load_vae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> CausalVAE:
    """Rebuild the VAE saved in `path` (see the module docstring), in eval mode."""
    config = vae_config_of(path)
    return load_model_dir(path, lambda: CausalVAE(config), device=device).eval()
