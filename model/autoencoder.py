"""The autoencoder interface the sampler decodes through (pixel space by default).

A latent video model runs the DiT on `encode(video)` and shows `decode(latent)`. Any
object with these two methods fits; `IdentityAutoencoder` keeps pixel space.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Autoencoder", "IdentityAutoencoder"]


@runtime_checkable
class Autoencoder(Protocol):
    def encode(self, video: Tensor) -> Tensor:
        """video [C, T, H, W] in [-1, 1] -> latent [C', T', H', W']."""
        ...

    def decode(self, latent: Tensor) -> Tensor:
        """latent [C', T', H', W'] -> video [C, T, H, W] in [-1, 1]."""
        ...


class IdentityAutoencoder:
    """Pixel space: the latent is the video."""

    def encode(self, video: Tensor) -> Tensor:
        return video

    def decode(self, latent: Tensor) -> Tensor:
        return latent
