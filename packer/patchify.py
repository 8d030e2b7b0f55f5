"""Spacetime patches: video [C, T, H, W] <-> tokens [N, C*pt*ph*pw] on a (T', H', W') grid.

Legend: C channels, T/H/W input frames/rows/columns, N = T'*H'*W' tokens,
D = C*pt*ph*pw features per token, K kept tokens (after dropping).

Tokens are ordered by grid index (t, h, w) row-major; features by (c, pt, ph, pw),
the einops pattern of lucidrains/vit-pytorch na_vit extended to time:
    'c (t pt) (h ph) (w pw) -> (t h w) (c pt ph pw)'
Both directions are one reshape + permute (a pure re-indexing, so the round trip
is bitwise exact).

Policies:
  * T=1 with pt > 1 (an image in a video model): the frame is replicated to pt
    frames, giving a T'=1 grid. unpatchify(..., frames=1) returns the image again;
    without `frames` it returns the pt identical copies (each bitwise the image).
  * T, H, W must be multiples of (pt, ph, pw) here: patchify never crops silently.
    prepare_sample gets there first (fit_budget + resize_video crop a remainder of
    less than one patch, or resize keeping aspect when the budget asks for it).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["patchify", "unpatchify", "patch_grid", "grid_coords"]


def patch_grid(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T', H', W') of a [C, frames, height, width] input; a single frame is one temporal patch."""
    pt, ph, pw = patch
    for name, size, p in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        if size < 1 or (size % p and not (name == "frames" and size == 1)):
            raise ValueError(f"{name}={size} is not a positive multiple of the patch {p} (patch={tuple(patch)})")
    return (1 if frames == 1 else frames // pt), height // ph, width // pw


def grid_coords(grid: tuple[int, int, int], *, device: torch.device | str | None = None) -> Tensor:
    """[N, 3] int32 (t, h, w) of every grid cell, row-major."""
    t, h, w = grid
    axes = [torch.arange(n, dtype=torch.int32, device=device) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def patchify(video_CTHW: Tensor, patch: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """video [C, T, H, W] -> (tokens [N, C*pt*ph*pw], coords [N, 3] int32 (t, h, w)).

    Cost: one copy of the video (the permute makes it contiguous).
    """
    if video_CTHW.ndim != 4:
        raise ValueError(f"patchify expects [C, T, H, W], got shape {tuple(video_CTHW.shape)}")
    pt, ph, pw = (int(p) for p in patch)
    c, t, h, w = video_CTHW.shape
    grid = patch_grid(t, h, w, (pt, ph, pw))
    if t == 1 and pt > 1:
        video_CTHW = video_CTHW.expand(c, pt, h, w)  # image -> one temporal patch of copies
    gt, gh, gw = grid
    x = video_CTHW.reshape(c, gt, pt, gh, ph, gw, pw)
    tokens_ND = x.permute(1, 3, 5, 0, 2, 4, 6).reshape(gt * gh * gw, c * pt * ph * pw)
    return tokens_ND, grid_coords(grid, device=video_CTHW.device)


def unpatchify(
    tokens_ND: Tensor,
    grid: tuple[int, int, int],
    patch: tuple[int, int, int],
    channels: int,
    coords_N3: Tensor | None = None,
    *,
    frames: int | None = None,
) -> Tensor:
    """tokens -> video [C, T'*pt, H'*ph, W'*pw] (or [C, frames, ...] if `frames` is given).

    tokens_ND: all N grid tokens in (t, h, w) order, or, with coords_N3, any K kept
    tokens with their (t, h, w) coords: they are scattered back and the dropped
    cells are zeros. frames: keep only the first `frames` frames (1 for an image
    patchified with pt > 1).
    """
    pt, ph, pw = (int(p) for p in patch)
    gt, gh, gw = (int(g) for g in grid)
    n, d = gt * gh * gw, channels * pt * ph * pw
    if tokens_ND.ndim != 2 or tokens_ND.shape[1] != d:
        raise ValueError(f"tokens must be [N, {d}] for channels={channels}, patch={tuple(patch)}; got {tuple(tokens_ND.shape)}")
    if coords_N3 is None:
        if tokens_ND.shape[0] != n:
            raise ValueError(f"{tokens_ND.shape[0]} tokens do not fill grid {tuple(grid)} ({n} cells); pass coords_N3")
        full_ND = tokens_ND
    else:
        if coords_N3.shape != (tokens_ND.shape[0], 3):
            raise ValueError(f"coords must be [{tokens_ND.shape[0]}, 3], got {tuple(coords_N3.shape)}")
        c64_K3 = coords_N3.to(torch.int64)
        hi = torch.tensor([gt, gh, gw], device=c64_K3.device)
        if c64_K3.numel() and ((c64_K3 < 0).any() or (c64_K3 >= hi).any()):
            raise ValueError(f"coords outside grid {tuple(grid)}: min {c64_K3.min(0).values.tolist()}, max {c64_K3.max(0).values.tolist()}")
        flat_K = (c64_K3[:, 0] * gh + c64_K3[:, 1]) * gw + c64_K3[:, 2]
        full_ND = tokens_ND.new_zeros(n, d)
        full_ND[flat_K] = tokens_ND
    x = full_ND.reshape(gt, gh, gw, channels, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
    video_CTHW = x.reshape(channels, gt * pt, gh * ph, gw * pw)
    if frames is not None:
        if not 1 <= frames <= gt * pt:
            raise ValueError(f"frames={frames} outside [1, {gt * pt}] for grid {tuple(grid)}, patch {tuple(patch)}")
        video_CTHW = video_CTHW[:, :frames]
    return video_CTHW
