"""Ground truth beside generated clips: a real clip of a caption at a size, and a noise measure.

reference_clip  the clip synth would draw for a shape caption, at any (T, H, W): drawn at
                4x the size and shrunk with the packer's antialiased resize, as training
                clips are, so its edges are as soft as the data the model learnt from;
hf_energy       mean |4-neighbour Laplacian| per pixel and channel (0-255 units), the
                residual-noise check of a generated clip against real clips of its size.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from patchpack.packer import resize_video
from patchpack.train.data.synth import render_shape

from .evaluate import parse_caption

DRAW_SCALE = 4  # draw at 4x, then shrink: the training clips were shrunk from 48-128 px sources


def reference_clip(caption: str, frames: int, height: int, width: int, *, seed: int,
                   object_scale: tuple[float, float] = (0.3, 0.45)) -> np.ndarray:
    """uint8 [T, H, W, 3]: a shape clip that shows `caption` (a synth shape caption), at a
    seeded random position and size; ValueError for a caption that is not one."""
    want = parse_caption(caption)
    if want.get("kind") not in ("shape", "digit"):
        raise ValueError(f"not a synth shape caption: {caption!r}")
    rng = random.Random(seed)
    h, w = height * DRAW_SCALE, width * DRAW_SCALE
    size = max(8, int(min(h, w) * rng.uniform(*object_scale)))
    top_left = (rng.randrange(h - size + 1), rng.randrange(w - size + 1))
    video = render_shape(want["object"], want["colour"], want["background"], frames=frames, height=h, width=w,
                         size=size, top_left=top_left, direction=want.get("direction"), speed=want.get("speed"))
    x_CTHW = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1
    y_CTHW = resize_video(x_CTHW, (frames, height, width), patch=(1, 1, 1))
    return ((y_CTHW.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def hf_energy(frames_THWC: np.ndarray) -> float:
    """Mean |4 x centre - 4 neighbours| over interior pixels, channels and frames (0-255 units)."""
    x = frames_THWC.astype(np.float32)
    lap = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    return float(np.abs(lap).mean())
