"""A realistic mix of image and video sizes, for the packing, attention and end-to-end benchmarks.

This is a *synthetic model* of what web-scale video training sets look like, not
measured data: no dataset is read. Its shape follows what public sources report:

- Share of images. Open-Sora 1.x/2.0 and NaViT train on images and videos jointly
  (images as 1-frame videos); we draw 30% images.
- Durations. Clips after scene-cut splitting are a few seconds long with a long tail:
  Panda-70M reports ~8.5 s average clips, HD-VILA-100M ~11.7 s, WebVid-10M ~18 s,
  OpenVid-1M / Open-Sora's curated clips mostly 2-16 s. We draw a log-normal duration
  with a median of 36 latent frames (~6 s at 24 fps with a 4x temporal VAE) and clip
  it to 2..300 latent frames (up to ~50 s).
- Resolutions. Open-Sora names resolution classes by pixel area ("144p" = 144x256,
  ..., "1080p" = 1080x1920) and lets the aspect ratio vary at constant area; we do
  the same, with web video skewed to 360p-720p and images skewed higher.
- Aspect ratios. Mostly 16:9, then 9:16 (phone video), 4:3, 1:1, 3:2, 21:9 (cinema);
  20% of samples take any ratio log-uniform in 9:21..21:9 (web crops, letterboxing).

Sizes come out in pixels, rounded to multiples of 16 (an 8x VAE times a 2x2 patch).
`to_latent` maps them to a causal video VAE's latent grid (4x in time with the first
frame alone, 8x in space), the units `patchpack.packer.fit_budget` is called with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# resolution class -> probability, for videos and for images (Open-Sora names: area = p x 16p/9)
VIDEO_RESOLUTIONS = {144: 0.05, 240: 0.10, 360: 0.25, 480: 0.20, 720: 0.28, 1080: 0.12}
IMAGE_RESOLUTIONS = {144: 0.02, 240: 0.05, 360: 0.13, 480: 0.20, 720: 0.30, 1080: 0.30}
# aspect ratio w/h -> probability (the remaining FREE_ASPECT_SHARE is log-uniform in 9:21..21:9)
ASPECT_RATIOS = {16 / 9: 0.45, 9 / 16: 0.14, 4 / 3: 0.13, 1.0: 0.10, 3 / 2: 0.06, 3 / 4: 0.04, 21 / 9: 0.06, 9 / 21: 0.02}
FREE_ASPECT_SHARE = 0.2
ASPECT_RANGE = (9 / 21, 21 / 9)


@dataclass(frozen=True)
class MixConfig:
    """Knobs of the synthetic image/video mix (defaults: see the module docstring)."""

    image_share: float = 0.3  # fraction of samples that are still images (1 frame)
    median_latent_frames: float = 36.0  # log-normal median of video durations, in latent frames
    sigma: float = 0.9  # log-normal spread; 0.9 puts ~10% of clips above 3x the median
    min_latent_frames: int = 2  # a video has at least 2 latent frames (5 pixel frames)
    max_latent_frames: int = 300  # clip the tail at ~50 s of 24 fps video
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (t, h, w) compression of the video VAE


@dataclass(frozen=True)
class NativeSize:
    """One sample at its native size, in pixels."""

    frames: int
    height: int
    width: int

    @property
    def is_image(self) -> bool:
        return self.frames == 1


def sample_native_sizes(n: int, *, seed: int, config: MixConfig | None = None) -> list[NativeSize]:
    """n native sizes drawn from the mix; the same seed gives the same list."""
    cfg = config or MixConfig()
    rng = np.random.default_rng(seed)
    is_image = rng.random(n) < cfg.image_share
    sizes = []
    for img in is_image:
        table = IMAGE_RESOLUTIONS if img else VIDEO_RESOLUTIONS
        p = float(rng.choice(list(table), p=list(table.values())))
        height, width = _frame_size(p, _aspect(rng), stride=cfg.vae_stride[1] * 2)
        sizes.append(NativeSize(1 if img else _pixel_frames(rng, cfg), height, width))
    return sizes


def to_latent(size: NativeSize, *, vae_stride: tuple[int, int, int] = (4, 8, 8)) -> tuple[int, int, int]:
    """(frames, height, width) on the latent grid of a causal VAE: first frame alone, then /st."""
    st, sh, sw = vae_stride
    return 1 + (size.frames - 1) // st, size.height // sh, size.width // sw


def _aspect(rng: np.random.Generator) -> float:
    if rng.random() < FREE_ASPECT_SHARE:
        lo, hi = ASPECT_RANGE
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return float(rng.choice(list(ASPECT_RATIOS), p=list(ASPECT_RATIOS.values())))


def _frame_size(p: float, aspect: float, *, stride: int) -> tuple[int, int]:
    """Height and width of area p x 16p/9 at the given aspect (w/h), multiples of stride."""
    area = p * p * 16 / 9
    height = max(stride, round(math.sqrt(area / aspect) / stride) * stride)
    width = max(stride, round(math.sqrt(area * aspect) / stride) * stride)
    return height, width


def _pixel_frames(rng: np.random.Generator, cfg: MixConfig) -> int:
    latent = rng.lognormal(math.log(cfg.median_latent_frames), cfg.sigma)
    latent = int(min(max(round(latent), cfg.min_latent_frames), cfg.max_latent_frames))
    return 1 + (latent - 1) * cfg.vae_stride[0]  # the pixel length a causal VAE maps to `latent`


def describe(sizes: list[NativeSize], *, vae_stride: tuple[int, int, int] = (4, 8, 8)) -> dict:
    """A few summary numbers of a drawn list (for the benchmark's JSON)."""
    videos = [to_latent(s, vae_stride=vae_stride)[0] for s in sizes if not s.is_image]
    aspects = np.array([s.width / s.height for s in sizes])
    return {
        "samples": len(sizes),
        "image_share": 1 - len(videos) / max(len(sizes), 1),
        "video_latent_frames_p10_p50_p90": [float(x) for x in np.percentile(videos, [10, 50, 90])] if videos else [],
        "aspect_min_max": [float(aspects.min()), float(aspects.max())] if len(sizes) else [],
    }
