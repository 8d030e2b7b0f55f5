"""Fit a decoded video to what the VAE accepts: T = 1 + k*ft frames, sides multiples of fs.

Used the same way by VAE training (train/loops/vae_loop.py) and latent pre-encoding
(train/data/latent_shards.py), so the latents the DiT sees come from the sizes the VAE trained on.
"""

from __future__ import annotations

import math

from torch import Tensor

from patchpack.packer import resize_video

from .model import VAEConfig

__all__ = ["fit_vae_size", "fit_to_vae"]


def fit_vae_size(frames: int, height: int, width: int, *, config: VAEConfig,
                 max_pixels: int | None = None, max_frames: int | None = None) -> tuple[int, int, int]:
    """The largest (T, H, W) <= the input the VAE accepts: keep the leading 1 + k*ft frames
    (<= max_frames), scale both sides by one factor so H*W <= max_pixels, round down to fs."""
    ft, fs = config.temporal, config.spatial
    cap = frames if max_frames is None else min(frames, max_frames)
    if cap < 1 or height < fs or width < fs:
        raise ValueError(f"video (T, H, W) = ({frames}, {height}, {width}) is too small for "
                         f"temporal={ft}, spatial={fs} (max_frames={max_frames})")
    t = 1 + (cap - 1) // ft * ft
    s = 1.0 if max_pixels is None else min(1.0, math.sqrt(max_pixels / (height * width)))
    h, w = (max(fs, int(side * s) // fs * fs) for side in (height, width))
    return t, h, w


def fit_to_vae(video_CTHW: Tensor, *, config: VAEConfig, max_pixels: int | None = None,
               max_frames: int | None = None) -> Tensor:
    """[C, T, H, W] -> the fitted size: leading frames, centre crop when a side loses < fs
    pixels (exact pixels), else an antialiased resize keeping the aspect (packer.resize_video)."""
    size = fit_vae_size(*video_CTHW.shape[1:], config=config, max_pixels=max_pixels, max_frames=max_frames)
    return resize_video(video_CTHW, size, patch=(1, config.spatial, config.spatial))
