"""3D rotary position embedding over the packer's (t, h, w) coords.

RoPE (Su et al., RoFormer, arXiv:2104.09864) rotates pairs of q/k features by an angle
proportional to the position, so q·k depends only on relative position. In 3D the
head_dim/2 rotary pairs are split between the three axes (as in Open-Sora 2 / Lumina's
axial RoPE): with `rope_split = (2, 3, 3)` a quarter of the pairs encode t and 3/8 each
encode h and w (floor for t and h, the remainder to w). For head_dim = 64 that is
8 / 12 / 12 pairs, i.e. 16 / 24 / 24 features. Within an axis of d_a features pair i
turns at frequency theta^(-2i / d_a), the usual 1D ladder.

Positions are the coords themselves, never a table sized by a grid, so any grid size
works and a sample's embedding does not depend on what it is packed with. Padding
tokens carry coords 0, and RoPE at position 0 is the identity.

Extrapolation beyond the largest grid seen in training (`rope_train_grid`), per sample
and per axis, with s = max(1, grid_a / train_grid_a):
  * "pi"  position interpolation (Chen et al., arXiv:2306.15595): positions / s, so the
          sample's positions stay inside the trained range (squeezed).
  * "ntk" NTK-aware scaling (bloc97, reddit r/LocalLLaMA 2023; used by YaRN/Code Llama):
          theta_a' = theta * s^(d_a / (d_a - 2)); high frequencies (local detail) stay,
          the lowest frequency is interpolated by exactly s.
  * "none" positions as they are (plain extrapolation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Rope3D", "apply_rope", "rope_axis_pairs"]


def rope_axis_pairs(head_dim: int, split: tuple[int, int, int]) -> tuple[int, int, int]:
    """Rotary pairs per axis (t, h, w); they sum to head_dim // 2."""
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} must be even for RoPE")
    pairs, total = head_dim // 2, sum(split)
    pt = pairs * split[0] // total
    ph = pairs * split[1] // total
    return pt, ph, pairs - pt - ph


class Rope3D(nn.Module):
    """coords [N, 3] -> (cos, sin) [N, 1, head_dim // 2], ready for `apply_rope`."""

    def __init__(
        self,
        head_dim: int,
        *,
        theta: float = 10000.0,
        split: tuple[int, int, int] = (2, 3, 3),
        extrapolation: str = "none",
        train_grid: tuple[int, int, int] = (16, 32, 32),
    ):
        super().__init__()
        if extrapolation not in ("none", "ntk", "pi"):
            raise ValueError(f"extrapolation={extrapolation!r} not in ('none', 'ntk', 'pi')")
        self.pairs = rope_axis_pairs(head_dim, split)
        self.theta = float(theta)
        self.extrapolation = extrapolation
        self.train_grid = tuple(int(g) for g in train_grid)

    def scale(self, grid_N3: Tensor) -> Tensor:
        """[N, 3] per-token axis scale s >= 1 from each token's sample grid."""
        train = torch.tensor(self.train_grid, dtype=torch.float32, device=grid_N3.device)
        return (grid_N3.float() / train).clamp(min=1.0)

    def forward(self, coords_N3: Tensor, grid_N3: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """coords_N3: int (t, h, w); grid_N3: each token's sample grid (needed for ntk/pi)."""
        if self.extrapolation != "none" and grid_N3 is None:
            raise ValueError(f"rope extrapolation {self.extrapolation!r} needs each token's grid")
        scale_N3 = self.scale(grid_N3) if self.extrapolation != "none" else None
        angles = []
        for axis, p in enumerate(self.pairs):
            if p == 0:
                continue
            d = 2 * p
            exponent = torch.arange(p, dtype=torch.float32, device=coords_N3.device) * 2 / d  # (p,)
            pos = coords_N3[:, axis].float()  # (N,)
            if self.extrapolation == "pi":
                pos = pos / scale_N3[:, axis]
            if self.extrapolation == "ntk":
                log_theta = math.log(self.theta) + d / max(d - 2, 1) * scale_N3[:, axis].log()  # (N,)
                inv_freq = torch.exp(-log_theta[:, None] * exponent[None])  # (N, p)
            else:
                inv_freq = torch.exp(-math.log(self.theta) * exponent)[None]  # (1, p)
            angles.append(pos[:, None] * inv_freq)  # (N, p)
        ang = torch.cat(angles, dim=-1)[:, None, :]  # (N, 1, head_dim/2): broadcast over heads
        return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [N, heads, head_dim] in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))  # (N, heads, head_dim/2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)  # (N, heads, head_dim)
