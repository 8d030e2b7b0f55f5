"""patchpack.model.vae: the causal 3D video VAE under the DiT (latent-space training).

    from patchpack.model.vae import CausalVAE, VAEConfig, load_vae, fit_to_vae
    vae = load_vae("runs/vae_demo/vae")
    latent = vae.encode(fit_to_vae(video, config=vae.config, max_pixels=40 * 40))

model.py the network and its config; blocks.py its causal conv, norm and resampling
blocks; fit.py the sizes it accepts; loss.py L1 + SSIM + KL and PSNR; checkpoint.py
safetensors + JSON files. docs/vae.md has the design and measured PSNR.
"""

from .checkpoint import VAE_CONFIG_NAME, load_vae, save_vae, vae_config_of
from .fit import fit_to_vae, fit_vae_size
from .loss import VAELoss, kl_divergence, psnr, ssim, vae_loss
from .model import CausalVAE, VAEConfig, VAEOutput

__all__ = [
    "VAE_CONFIG_NAME",
    "CausalVAE",
    "VAEConfig",
    "VAELoss",
    "VAEOutput",
    "fit_to_vae",
    "fit_vae_size",
    "kl_divergence",
    "load_vae",
    "psnr",
    "save_vae",
    "ssim",
    "vae_config_of",
    "vae_loss",
]
