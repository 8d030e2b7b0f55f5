"""Open-Sora-style buckets, the bucketing baseline of packing.py and e2e.py.

Open-Sora names resolutions by pixel area (p x 16p/9), keeps 17 aspect ratios per
resolution (height/width 0.38..2.08), and has a few frame-count buckets per resolution
(1 for images, then 51/102/204 pixel frames in 1.2). Each sample goes to a (resolution,
frames, aspect) bucket no larger than itself, is resized to cover it and centre-cropped;
a batch holds samples of one bucket only. Our table keeps the resolutions and aspect
ratios, uses finer power-of-two frame buckets, and picks deterministically the bucket
that keeps the most tokens within the budget: kinder to bucketing than Open-Sora's
random choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

RESOLUTIONS = (144, 240, 360, 480, 720, 1080)
FRAMES = (1, 4, 8, 16, 32, 64, 128)
ASPECTS = (0.38, 0.43, 0.48, 0.50, 0.53, 0.54, 0.56, 0.62, 0.67, 0.75, 1.00, 1.33, 1.50, 1.78, 1.89, 2.00, 2.08)  # h/w


def bucket_grid(p: float, aspect_hw: float, side: float) -> tuple[int, int]:
    """(rows, cols) of `side`-pixel patches of the bucket of area p x 16p/9 at height/width aspect_hw."""
    area = p * p * 16 / 9
    return max(1, round(math.sqrt(area * aspect_hw) / side)), max(1, round(math.sqrt(area / aspect_hw) / side))


def assign_bucket(frames: int, aspect_hw: float, native_area: int, *, budget: int,
                  grid_of: Callable[[int, float], tuple[int, int]]) -> tuple[tuple[int, int, float], int, int, int]:
    """The bucket keeping the most tokens: ((resolution, frames, aspect), rows, cols, tokens).

    The aspect is the nearest of ASPECTS; a resolution whose grid (grid_of(p, aspect))
    holds more patches than the sample's native_area is never used (no upscaling); tokens
    are frames x rows x cols <= budget with frames <= the sample's. tokens == 0: none fits.
    """
    aspect = min(ASPECTS, key=lambda a: abs(math.log(a / aspect_hw)))
    best, best_rows, best_cols, best_tokens = (0, 0, aspect), 0, 0, 0
    for p in RESOLUTIONS:
        rows, cols = grid_of(p, aspect)
        if rows * cols > native_area:
            break  # never upscale
        for f in FRAMES:
            tokens = f * rows * cols
            if f <= frames and tokens <= budget and tokens >= best_tokens:
                best, best_rows, best_cols, best_tokens = (p, f, aspect), rows, cols, tokens
    return best, best_rows, best_cols, best_tokens
