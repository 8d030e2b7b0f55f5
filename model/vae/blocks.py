"""Causal 3D building blocks of the video VAE: convs, norms, resampling, with a time cache.

Every block maps [B, C, T, H, W] -> [B, C', T', H', W'] and output frame t depends only on
input frames <= t (causal in time; space is ordinary "same" padding). The first frame is
special: the time padding repeats it (so an image is a still video, as in CogVideoX's
causal conv, arXiv:2408.06072), and the temporal resamplers keep it on its own
(MAGVIT-v2, arXiv:2310.05737: T -> 1 + (T - 1) / 2 per x2 step).

Streaming. With `stream=True` a block keeps what it needs of the past (the last k-1
input frames of a conv, whether the first frame has gone by for a resampler) so a
video fed in chunks gives the same output as the whole video at once. `reset_stream`
clears that state; chunk sizes must keep the phase (after the first chunk of
1 + n*f frames, chunks of m*f frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Streaming(nn.Module):
    """A block that may carry state across calls when `stream` is on."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = False
        self.cache: Tensor | None = None  # the past this block needs; None before the first chunk

    def reset_stream(self, on: bool) -> None:
        self.stream, self.cache = on, None


class CausalConv3d(Streaming):
    """Conv3d (kt, k, k), stride 1: pad kt-1 frames on the past only (first frame repeated).

    Fast path: the kt shifted copies of the input are stacked on channels and run as one
    Conv2d over all frames, (B*T, kt*C, H, W), because CPU Conv3d falls back to a slow
    im2col kernel (~2x slower here, forward + backward) while Conv2d uses oneDNN. It costs
    kt copies of the input. `reference=True` runs nn.Conv3d on the same weights.
    """

    def __init__(self, cin: int, cout: int, *, kernel: int = 3, kernel_t: int = 3) -> None:
        super().__init__()
        self.kt, self.pad = kernel_t, kernel // 2
        self.conv = nn.Conv3d(cin, cout, (kernel_t, kernel, kernel), padding=(0, self.pad, self.pad))
        self.reference = False

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        if self.kt > 1:
            past = self.cache if self.cache is not None else x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
            x = torch.cat([past, x], dim=2)  # (B, C, kt-1+T, H, W)
            if self.stream:  # the next chunk's past; detached: streaming is for inference
                self.cache = x[:, :, -(self.kt - 1):].detach()
        if self.reference:
            return self.conv(x)  # (B, C', T, H, W)
        b, c, tp, h, w = x.shape
        t = tp - self.kt + 1
        shifted = torch.cat([x[:, :, i : i + t] for i in range(self.kt)], dim=1) if self.kt > 1 else x
        frames = shifted.transpose(1, 2).reshape(b * t, self.kt * c, h, w)  # channel order (dt, c)
        weight = self.conv.weight.transpose(1, 2).flatten(1, 2)  # (C', kt*C, k, k), same order
        y = F.conv2d(frames, weight, self.conv.bias, padding=self.pad)  # (B*T, C', H, W)
        return y.view(b, t, -1, h, w).transpose(1, 2)  # (B, C', T, H, W)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over (C/G, H, W) of each frame alone: no statistic mixes frames, so the
    norm is causal and chunking never changes it (a 3D GroupNorm would mix all T)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, c, h, w).transpose(1, 2)


def norm_groups(c: int) -> int:
    """GroupNorm groups for c channels: the largest of 8, 4, 2, 1 that divides c."""
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class ResBlock(nn.Module):
    """norm-SiLU-conv twice plus a skip (1x1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(norm_groups(cin), cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = FrameNorm(norm_groups(cout), cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(Streaming):
    """x2 in space (stride-2 3x3 conv per frame) and optionally x2 in time.

    Time: a causal conv, then keep frames 0, 2, 4, ... of the whole video, so latent frame j
    has seen input frames <= 2j and frame 0 alone makes latent frame 0.
    """

    def __init__(self, c: int, *, time: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.time, self.shortcut = time, shortcut
        self.space = nn.Conv2d(c, c, 3, stride=2, padding=1)  # per frame (CPU Conv3d is slow)
        self.tconv = CausalConv3d(c, c, kernel=1, kernel_t=3) if time else None

    def reset_stream(self, on: bool) -> None:
        super().reset_stream(on)
        if self.tconv is not None:
            self.tconv.reset_stream(on)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = self.space(frames)
        if self.shortcut:  # DC-AE's space-to-channel shortcut; at equal widths it is a 2x2 mean
            y = y + F.avg_pool2d(frames, 2, ceil_mode=True)
        x = y.view(b, t, c, *y.shape[-2:]).transpose(1, 2)  # (B, C, T, H/2, W/2)
        if self.tconv is None:
            return x
        first = self.cache is None  # whole video, or the first chunk: its frame 0 is global frame 0
        x = x + self.tconv(x) if self.shortcut else self.tconv(x)  # shortcut: the kept frame itself
        x = x[:, :, 0::2] if first else x[:, :, 1::2]  # (B, C, 1 + (T-1)/2 or T/2, H/2, W/2)
        if self.stream:
            self.cache = x.new_empty(0)  # marks "frame 0 has gone by"
        return x


class Upsample(Streaming):
    """x2 in space (nearest + 3x3 conv) and optionally x2 in time (depth-to-time).

    Time: a causal conv makes 2C channels per frame, read as 2 frames; latent frame 0
    keeps only its second half (1 frame), so T' -> 1 + 2(T'-1), the encoder's inverse.
    """

    def __init__(self, c: int, *, time: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.time, self.shortcut = time, shortcut
        self.tconv = CausalConv3d(c, 2 * c, kernel=1, kernel_t=3) if time else None
        self.space = CausalConv3d(c, c, kernel=3, kernel_t=1)

    def reset_stream(self, on: bool) -> None:
        super().reset_stream(on)
        if self.tconv is not None:
            self.tconv.reset_stream(on)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        if self.tconv is not None:
            b, c, t, h, w = x.shape
            first = self.cache is None
            y = self.tconv(x).view(b, 2, c, t, h, w)  # (B, 2, C, T, H, W)
            if self.shortcut:  # channel-to-time shortcut: both output frames start as the input frame
                y = y + x[:, None]
            x = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frames (j, 0), (j, 1) interleaved
            x = x[:, :, 1:] if first else x  # (B, C, 2T-1 or 2T, H, W)
            if self.stream:
                self.cache = x.new_empty(0)
        b, c, t, h, w = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2.0, mode="nearest")
        x = x.view(b, t, c, 2 * h, 2 * w).transpose(1, 2)  # (B, C, T, 2H, 2W)
        return x + self.space(x) if self.shortcut else self.space(x)  # shortcut: nearest upsampling
