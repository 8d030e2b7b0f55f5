"""prepare_sample: one float video [C, T, H, W] -> PatchedSample (budget resize, patchify, drop).

Legend: C channels, T/H/W frames/rows/columns, N tokens, D = C*pt*ph*pw.

Bad input raises SampleError with a machine-readable reason (see errors.REASONS) so
that a stream can count skips instead of dying on one corrupt clip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batch import PatchedSample
from .budget import fit_budget, resize_video, sample_budget
from .config import PackerConfig
from .drop import drop_tokens, resolve_drop_rate
from .errors import SampleError
from .patchify import patch_grid, patchify

__all__ = ["prepare_sample", "check_video"]


def check_video(video_CTHW: object) -> Tensor:
    """Raise SampleError unless video is a finite, non-empty float tensor [C, T, H, W]."""
    if not isinstance(video_CTHW, Tensor):
        raise SampleError("bad_type", f"expected a torch.Tensor [C, T, H, W], got {type(video_CTHW).__name__}")
    if video_CTHW.ndim != 4:
        raise SampleError("bad_rank", f"expected [C, T, H, W] (4 dims), got shape {tuple(video_CTHW.shape)}")
    if not video_CTHW.is_floating_point():
        raise SampleError("bad_dtype", f"expected a float video (pixels in [-1, 1] or latents), got {video_CTHW.dtype}")
    if video_CTHW.numel() == 0:
        names = [n for n, s in zip(("channels", "frames", "height", "width"), video_CTHW.shape) if s == 0]
        raise SampleError("empty", f"video of shape {tuple(video_CTHW.shape)} has 0 {', 0 '.join(names)}")
    if not torch.isfinite(video_CTHW).all():
        raise SampleError("nonfinite", f"video of shape {tuple(video_CTHW.shape)} holds NaN or inf")
    return video_CTHW


def prepare_sample(
    video_CTHW: Tensor,
    *,
    config: PackerConfig,
    generator: torch.Generator,
    key: str = "",
    meta: dict | None = None,
) -> PatchedSample:
    """Budget-resize, patchify and token-drop one video; see budget.py for the size policy.

    The sample holds at most config.token_budget tokens (before dropping), so with
    oversize="downscale" it always fits in max_len.
    """
    check_video(video_CTHW)
    _, t, h, w = video_CTHW.shape
    budget = config.token_budget
    if config.resolution_sampling is not None:
        budget = sample_budget(budget, config.resolution_sampling, generator=generator)
    size = fit_budget(t, h, w, patch=config.patch, max_tokens=budget, max_frames=config.max_frames, time_trim=config.time_trim)
    video_CTHW = resize_video(video_CTHW, size, patch=config.patch)
    tokens_ND, coords_N3 = patchify(video_CTHW, config.patch)
    grid = patch_grid(*size, config.patch)
    rate = resolve_drop_rate(config.drop_rate, grid, generator=generator)
    tokens_ND, coords_N3 = drop_tokens(tokens_ND, coords_N3, rate, generator=generator)
    return PatchedSample(tokens=tokens_ND, coords=coords_N3, grid=grid, key=key, meta={} if meta is None else meta)
