"""Token budgets: pick a target size that keeps aspect and fits max_tokens, then resize.

Legend: C channels, T/H/W frames/rows/columns.

Policy (fit_budget), exact and joint in (T', H', W'):
  * time: keep the first min(T, max_frames) frames, floored to a multiple of pt (a
    contiguous clip keeps motion speed; no temporal resampling). T=1 stays an image
    whatever pt is; a clip of 1 < T < pt frames keeps its first frame as an image. The fit
    may cut up to `time_trim` more trailing temporal patches (never more than a quarter of
    the clip) when the shorter clip holds more tokens: per-frame grids are coarse (about
    128 cells at typical budgets), and one frame fewer often lets both sides grow.
  * space: the grid with the most cells within the per-frame budget, never upsampled,
    keeping the aspect within one patch per side (the band of grids.py). Flooring each
    side of the exactly scaled frame on its own, as this used to, left rows ~7% empty;
    the joint search lands within about a percent of the budget (benchmarks/README.md).
  * NaViT random resolution (sample_budget): draw a linear scale s ~ U(lo, hi) per
    sample and use s^2 * max_tokens as the budget (Dehghani et al. 2023, "Patch n' Pack",
    section 3.2 "variable resolution").

Resizing is torch interpolate (bilinear, antialias on, since we only downscale: without
it high frequencies alias into the latent/pixels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SampleError
from .grids import Band, largest

__all__ = ["FIT_REASONS", "fit_budget", "fit_grids", "resize_video", "sample_budget", "sampled_range"]


# reason codes of fit_grids, in SampleError's vocabulary
FIT_REASONS = ("", "empty", "too_small", "too_long")
CHUNK = 2048  # samples per vectorised step: 2048 x 6 candidates x 8 bytes stay in L2


def fit_grids(frames, height, width, *, patch, max_tokens, max_frames=None, time_trim: int = 3):
    """fit_budget for many samples at once (numpy; every argument may be an array over samples).

    Returns (grid [n, 3] int64 patch grid (T', H', W'), frames [n] int64 target frames,
    reason [n] int8: index into FIT_REASONS, 0 where the fit exists).
    Cost: 6 candidate grids per sample that exceeds its budget, 6 more per trim tried on
    clips of >= 4 temporal patches; about 0.2 us a sample.
    """
    pt, ph, pw = (int(p) for p in patch)
    t, h, w = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64).reshape(-1) for v in (frames, height, width)))
    budget = np.broadcast_to(np.asarray(max_tokens, dtype=np.int64).reshape(-1), t.shape)
    if max_frames is not None:
        t = np.minimum(t, np.asarray(max_frames, dtype=np.int64).reshape(-1))
    image = (t < pt) | (t == 1)
    gt_max = np.where(image, 1, t // pt)
    reason = np.zeros(t.shape, dtype=np.int8)
    reason[gt_max > budget] = 3
    reason[(h < ph) | (w < pw)] = 2
    reason[np.minimum(np.minimum(t, h), w) < 1] = 1
    ok = reason == 0
    grid = np.zeros((len(t), 3), dtype=np.int64)
    grid[:, 0], grid[:, 1], grid[:, 2] = gt_max, h // ph, w // pw  # the whole native clip, where it fits
    search = np.flatnonzero(ok & (grid.prod(axis=1) > budget))
    for a in range(0, search.size, CHUNK):  # chunks keep the candidate arrays in cache: ~5x faster
        i = search[a : a + CHUNK]
        grid[i] = _fit_search(Band.of(h[i], w[i], ph, pw), gt_max[i], budget[i], int(time_trim))
    grid[~ok] = 0
    return grid, np.where(ok, np.where(image, 1, grid[:, 0] * pt), 0), reason


def _fit_search(band: Band, gt_max: np.ndarray, budget: np.ndarray, time_trim: int) -> np.ndarray:
    """The most tokens over the full clip and up to time_trim trims (never below 3/4 of it)."""
    gx, gy, cells = largest(band, budget // gt_max)
    best, gt = gt_max * cells, gt_max.copy()
    # clips of 4+ temporal patches (one fewer is within a quarter) not already at the budget
    trim = np.flatnonzero((gt_max >= 4) & (best < budget)) if time_trim else np.zeros(0, dtype=np.int64)
    if trim.size:
        g_K = gt_max[trim, None] - np.arange(1, time_trim + 1)
        g_K = np.where(4 * g_K >= 3 * gt_max[trim, None], g_K, 0)
        tx, ty, tc = largest(band[trim].expand(), np.where(g_K > 0, budget[trim, None] // np.maximum(g_K, 1), 0))
        tokens = np.where(tc > 0, g_K * tc, -1)
        k = tokens.argmax(axis=1)[:, None]  # the longest of equals
        t_best = np.take_along_axis(tokens, k, axis=1)[:, 0]
        win = t_best > best[trim]  # a trim must buy tokens: ties keep the full clip
        sel = trim[win]
        gx[sel], gy[sel] = (np.take_along_axis(a, k, axis=1)[win, 0] for a in (tx, ty))
        gt[sel] = np.take_along_axis(g_K, k, axis=1)[win, 0]
    gh, gw = band.hw(gx, gy)
    return np.stack([gt, gh, gw], axis=1)


def fit_budget(
    frames: int,
    height: int,
    width: int,
    *,
    patch: tuple[int, int, int],
    max_tokens: int,
    max_frames: int | None = None,
    time_trim: int = 3,
) -> tuple[int, int, int]:
    """Target (T, H, W), multiples of the patch (T may be 1), with the most tokens
    T'*H'*W' <= max_tokens (see the module docstring for the policy).

    Raises SampleError (a ValueError) "empty", "too_small" (smaller than one patch)
    or "too_long" (more temporal patches than max_tokens: set max_frames).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if time_trim < 0:
        raise ValueError(f"time_trim must be >= 0, got {time_trim}")
    grid, out_frames, reason = fit_grids(frames, height, width, patch=patch, max_tokens=max_tokens, max_frames=max_frames, time_trim=time_trim)
    pt, ph, pw = (int(p) for p in patch)
    code = FIT_REASONS[int(reason[0])]
    if code == "empty":
        raise SampleError("empty", f"size (T, H, W) = ({frames}, {height}, {width}) has an empty dimension")
    if code == "too_small":
        raise SampleError("too_small", f"{height}x{width} is smaller than one {ph}x{pw} patch")
    if code == "too_long":
        t = frames if max_frames is None else min(frames, int(max_frames))
        raise SampleError("too_long", f"{t // pt} temporal patches ({frames} frames, pt={pt}) > max_tokens={max_tokens}; set max_frames")
    gt, gh, gw = (int(v) for v in grid[0])
    assert gt * gh * gw <= max_tokens, (gt, gh, gw, max_tokens)
    return int(out_frames[0]), gh * ph, gw * pw


def sample_budget(max_tokens: int, scale_range: tuple[float, float], *, generator: torch.Generator) -> int:
    """NaViT random resolution: budget s^2 * max_tokens with s ~ U(lo, hi), at least 1."""
    lo, hi = scale_range
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    return max(1, int(s * s * max_tokens))


def sampled_range(scale, scale_range: tuple[float, float], max_tokens: int, min_scale: float):
    """NaViT random resolution for plan_sized: (budget, cap, min_scale) of samples whose drawn
    linear scale is `scale` (a float or an array).

    The plain fit aims at budget = scale^2 * max_tokens; the planner may then move the scale
    by a factor min_scale either way, down to min_scale * scale and up to scale / min_scale,
    never outside scale_range: cap is the token count at the upper end, and the returned
    min_scale is raised where min_scale * scale would fall below lo. Shrinking and growing
    are both allowed so that the chosen scales stay distributed like the drawn ones.
    """
    lo, hi = scale_range
    s = np.asarray(scale, dtype=np.float64)
    budget = np.maximum(1, (s * s * max_tokens).astype(np.int64))
    cap = np.maximum(budget, (np.minimum(hi, s / min_scale) ** 2 * max_tokens).astype(np.int64))
    ms = np.minimum(1.0, np.maximum(min_scale, lo / s))
    if s.ndim == 0:
        return int(budget), int(cap), float(ms)
    return budget, cap, ms


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
