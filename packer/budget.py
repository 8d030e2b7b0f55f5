"""Token budgets: pick a target size that keeps aspect and fits max_tokens, then resize.

Legend: C channels, T/H/W frames/rows/columns.

Policy (fit_budget):
  * time: keep the first min(T, max_frames) frames, floored to a multiple of pt
    (a contiguous clip keeps motion speed; no temporal resampling). T=1 stays an
    image whatever pt is; a clip of 1 < T < pt frames keeps its first frame as an image.
  * space: never upsample. If the grid already fits, only the remainder (< one patch)
    is cropped, centred. Otherwise scale both sides by the same factor
    s = sqrt(budget_per_frame * ph * pw / (H * W)) and floor to the patch, so the aspect
    ratio is kept to within one patch per side.
  * NaViT random resolution (sample_budget): draw a linear scale s ~ U(lo, hi) per
    sample and use s^2 * max_tokens as the budget (Dehghani et al. 2023, "Patch n' Pack",
    section 3.2 "variable resolution").

Resizing is torch interpolate (bilinear, antialias on, since we only downscale: without
it high frequencies alias into the latent/pixels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SampleError

__all__ = ["fit_budget", "resize_video", "sample_budget"]


def fit_budget(
    frames: int,
    height: int,
    width: int,
    *,
    patch: tuple[int, int, int],
    max_tokens: int,
    max_frames: int | None = None,
) -> tuple[int, int, int]:
    """Target (T, H, W), multiples of the patch (T may be 1), with T'*H'*W' <= max_tokens.

    Raises SampleError (a ValueError) "empty", "too_small" (smaller than one patch)
    or "too_long" (more temporal patches than max_tokens: set max_frames).
    """
    pt, ph, pw = (int(p) for p in patch)
    if min(frames, height, width) < 1:
        raise SampleError("empty", f"size (T, H, W) = ({frames}, {height}, {width}) has an empty dimension")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if height < ph or width < pw:
        raise SampleError("too_small", f"{height}x{width} is smaller than one {ph}x{pw} patch")
    t = frames if max_frames is None else min(frames, int(max_frames))
    grid_t = 1 if t < pt or t == 1 else t // pt
    t = 1 if grid_t == 1 and t < pt else grid_t * pt
    per_frame = max_tokens // grid_t
    if per_frame < 1:
        raise SampleError("too_long", f"{grid_t} temporal patches ({frames} frames, pt={pt}) > max_tokens={max_tokens}; set max_frames")

    gh, gw = height // ph, width // pw
    if gh * gw > per_frame:
        s = math.sqrt(per_frame * ph * pw / (height * width))
        gh, gw = max(1, int(height * s / ph)), max(1, int(width * s / pw))
        if gh * gw > per_frame:  # a side clamped at 1 (extreme aspect) or float round-up
            if gh >= gw:
                gh = max(1, per_frame // gw)
            else:
                gw = max(1, per_frame // gh)
    assert grid_t * gh * gw <= max_tokens, (grid_t, gh, gw, max_tokens)
    return t, gh * ph, gw * pw


def sample_budget(max_tokens: int, scale_range: tuple[float, float], *, generator: torch.Generator) -> int:
    """NaViT random resolution: budget s^2 * max_tokens with s ~ U(lo, hi), at least 1."""
    lo, hi = scale_range
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    return max(1, int(s * s * max_tokens))


def resize_video(video_CTHW: Tensor, size: tuple[int, int, int], *, patch: tuple[int, int, int]) -> Tensor:
    """Shrink [C, T, H, W] to size (frames, height, width): keep the first frames; if each
    side loses less than one patch, centre-crop (pixels stay exact), else bilinear
    antialiased resize (fit_budget scaled both sides by one factor, so aspect is kept).

    Cost: the resize runs in float32 (one extra copy for half-precision inputs).
    """
    frames, height, width = size
    _, ph, pw = patch
    c, t, h, w = video_CTHW.shape
    if not (1 <= frames <= t and 1 <= height <= h and 1 <= width <= w):
        raise ValueError(f"resize_video only shrinks: input (T, H, W) = ({t}, {h}, {w}), target {tuple(size)}")
    x_CTHW = video_CTHW[:, :frames]
    if h - height < ph and w - width < pw:
        top, left = (h - height) // 2, (w - width) // 2
        return x_CTHW[:, :, top : top + height, left : left + width]
    x_TCHW = x_CTHW.transpose(0, 1).float()
    y_TCHW = F.interpolate(x_TCHW, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y_TCHW.transpose(0, 1).to(video_CTHW.dtype)
