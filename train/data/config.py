"""DataConfig: where the shards are and how samples are decoded, shuffled and split.

The packer's own knobs (patch size, max_len, token budget, drop rate) live in
`patchpack.packer.PackerConfig`; this config stops at "a float video [C, T, H, W] and
a caption", which is what the packer's `prepare_sample` takes.
"""

from __future__ import annotations

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

    # Shuffling: shard order per epoch (same on every rank), then a buffer of raw
    # (still encoded) samples, so the buffer costs compressed bytes, not pixels.
    shuffle_shards: bool = True
    shuffle_buffer: int = 64  # 0 turns the sample shuffle off

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 or None, got {self.fps}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.clip_start not in ("random", "first"):
            raise ValueError(f"clip_start must be 'random' or 'first', got {self.clip_start!r}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {self.epochs}")
