"""VAE losses and the reconstruction metric: L1 + (1 - SSIM) + a small KL, and PSNR.

SSIM is Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity") per frame with a uniform 7x7 window instead of the 11x11 Gaussian: it is the
LPIPS-free perceptual proxy here (it rewards local structure and contrast, which L1 alone
blurs), and a box filter is one avg_pool2d. Signals are in [-1, 1], so the data range is 2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

__all__ = ["VAELoss", "vae_loss", "ssim", "psnr", "kl_divergence"]

_C1, _C2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # SSIM's stabilisers for a data range of 2


def _frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def ssim(x: Tensor, y: Tensor, *, window: int = 7) -> Tensor:
    """Mean SSIM over frames of two (B, C, T, H, W) videos in [-1, 1]; the window shrinks
    to the frame for frames smaller than it."""
    a, b = _frames(x.float()), _frames(y.float())
    k = min(window, a.shape[-2], a.shape[-1])
    pool = lambda z: F.avg_pool2d(z, k, stride=1)  # noqa: E731  valid windows only
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2))
    return s.mean()


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2), after clamping the first."""
    mse = float((x.clamp(-1, 1).float() - y.float()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


class VAELoss(NamedTuple):
    loss: Tensor  # what backward() runs on
    l1: Tensor
    ssim: Tensor
    kl: Tensor


def vae_loss(recon: Tensor, target: Tensor, mean: Tensor, logvar: Tensor, *,
             ssim_weight: float, kl_weight: float) -> VAELoss:
    """L1 + ssim_weight * (1 - SSIM) + kl_weight * KL, each a mean (per pixel / per latent)."""
    l1 = (recon - target).abs().mean()
    s = ssim(recon, target) if ssim_weight > 0 else recon.new_zeros(())
    kl = kl_divergence(mean, logvar)
    return VAELoss(l1 + ssim_weight * (1.0 - s) + kl_weight * kl, l1.detach(), s.detach(), kl.detach())
