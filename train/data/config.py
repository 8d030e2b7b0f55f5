"""DataConfig: where the shards are and how samples are decoded, shuffled and split.

The packer's own knobs (patch size, max_len, token budget, drop rate) live in
`patchpack.packer.PackerConfig`; this config stops at "a float video [C, T, H, W] and
a caption", which is what the packer's `prepare_sample` takes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # Shards: a directory (every *.tar in it), a path, a brace pattern
    # ("data/shard-{000..009}.tar"), a "file:" URL, or a list of those.
    shards: list[str] = field(default_factory=list)
    # "pipe:" URLs run a shell command per shard; refused unless asked for explicitly.
    allow_pipe: bool = False
    # Passes over the shards; None streams forever (training), an int ends the stream.
    epochs: int | None = None
    seed: int = 0

    # Frame sampling. fps resamples to this rate from the container's timestamps
    # (never invents frames: a 4 fps source stays 4 fps); None keeps every
    # `stride`-th native frame instead.
    fps: float | None = 8.0
    stride: int = 1
    max_seconds: float | None = 6.0  # clip length cap; longer videos get a clip
    max_frames: int | None = 48  # cap after sampling (the packer may cut further)
    clip_start: str = "random"  # "random" (seeded) or "first" for clips of long videos

    # Refuse absurd inputs before decoding them (counted as skips, not crashes).
    max_pixels: int = 4096 * 4096  # per frame, from the header
    max_source_frames: int = 100_000  # declared frame count of a video
    # A reader that skips this many samples in a row, none usable, stops with an error
    # giving the counts by reason, instead of spinning on data it can never use.
    max_skips_in_a_row: int = 1000

    # Shuffling: shard order per epoch (same on every rank), then a buffer of raw
    # (still encoded) samples, so the buffer costs compressed bytes, not pixels.
    shuffle_shards: bool = True
    shuffle_buffer: int = 64  # 0 turns the sample shuffle off

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a finite number > 0 or None, got {self.fps}")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a finite number > 0 or None, got {self.max_seconds}")
        for name in ("stride", "max_pixels", "max_source_frames", "max_skips_in_a_row"):
            _check_int(name, getattr(self, name), low=1)
        if self.max_frames is not None:
            _check_int("max_frames", self.max_frames, low=1)
        if self.epochs is not None:
            _check_int("epochs", self.epochs, low=1)
        _check_int("shuffle_buffer", self.shuffle_buffer, low=0)
        _check_int("seed", self.seed, low=None)
        if self.clip_start not in ("random", "first"):
            raise ValueError(f"clip_start must be 'random' or 'first', got {self.clip_start!r}")


def _check_int(name: str, value, *, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
