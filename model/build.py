"""Model construction: the DiT with its caption encoder (and the VAE whose latents it diffuses).

    models = build_models(dit_config("tiny"), text="tiny", vae=None)
    models.dit, models.text_encoder, models.vae, models.dit.config  # config: resolved

Three DiTConfig fields follow from the other components and are filled in here, whatever
the given config says: `text_dim` from the text encoder, `in_channels` from the VAE's
latent channels (3 for pixels), and `patch` stays the caller's (a training run passes the
packer's). The returned `dit.config` is the resolved one: save it, and loading rebuilds
the same network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from torch import nn

from .config import DiTConfig
from .dit import DiT
from .text import build_text_encoder
from .vae import CausalVAE, load_vae, vae_config_of

__all__ = ["Models", "build_models"]


@dataclass
class Models:
    dit: DiT
    text_encoder: nn.Module
    vae: CausalVAE | None  # None: the DiT works in pixels


def build_models(config: DiTConfig, *, text: str = "tiny", vae: str | os.PathLike | None = None,
                 load_vae_weights: bool = True) -> Models:
    """Build the DiT of `config`, the text encoder named by `text` (model/text) and, when `vae`
    names an exported VAE directory, that VAE (its weights only if load_vae_weights; a
    training loop needs only its latent channels)."""
    encoder = build_text_encoder(text)
    channels = 3
    autoencoder = None
    if vae is not None:
        autoencoder = load_vae(vae) if load_vae_weights else None
        channels = (autoencoder.config if autoencoder is not None else vae_config_of(vae)).latent_channels
    resolved = replace(config, text_dim=encoder.dim, in_channels=channels)
    return Models(DiT(resolved), encoder, autoencoder)
