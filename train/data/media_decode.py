"""Decode shard media at native size: mp4 via PyAV, jpg/png via PIL.

Frames are chosen from the container's timestamps (not from a frame counter), so
variable-frame-rate files resample correctly: output frame k is the first source
frame at or after start + k / fps. Nothing is resized here; the packer's token
budget does that. Failures raise DecodeError with a short `.reason` for skip counts.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_FPS = 24.0  # only when a container declares no rate at all
VIDEO_EXTS = ("mp4",)
IMAGE_EXTS = ("jpg", "jpeg", "png")
LATENT_EXT = "latent.safetensors"  # a pre-encoded VAE latent (train/data/latent_shards.py), tensor "latent"


class DecodeError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class Decoded:
    frames_THWC: np.ndarray  # uint8 RGB
    fps: float  # rate of the returned frames (0.0 for an image)
    source_fps: float
    source_frames: int  # declared by the container (0 if unknown)


def decode_image(data: bytes, *, max_pixels: int) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the header only
        w, h = im.size
        if w * h > max_pixels:
            raise DecodeError("too_large", f"image {w}x{h} > max_pixels={max_pixels}")
        rgb = np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise DecodeError("corrupt_image", f"{type(e).__name__}: {e}") from None
    if rgb.size == 0:
        raise DecodeError("no_frames", f"image of size {w}x{h}")
    return Decoded(rgb[None], fps=0.0, source_fps=0.0, source_frames=1)


def decode_video(
    data: bytes,
    *,
    fps: float | None,
    stride: int = 1,
    max_seconds: float | None,
    max_frames: int | None,
    max_pixels: int,
    max_source_frames: int,
    rng: random.Random | None = None,
) -> Decoded:
    """mp4 bytes -> uint8 [T, H, W, 3]. rng picks the clip start of a long video (None: from 0)."""
    import av

    try:
        container = av.open(io.BytesIO(data))
    except (av.FFmpegError, ValueError, EOFError) as e:  # a cut moov atom fails here
        raise DecodeError("corrupt_video", f"{type(e).__name__}: {e}") from None
    with container:
        if not list(container.streams):
            # ffmpeg opens an mp4 cut before its index (moov atom, written last by default)
            # as an empty container; an index with no tracks is a genuinely 0-frame file
            if _cut_box(data):
                raise DecodeError("corrupt_video", "no streams; the file ends inside an mp4 box (truncated)")
            raise DecodeError("no_frames", "container holds no streams")
        if not container.streams.video:
            raise DecodeError("no_video", "container has no video stream")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > max_pixels:
            raise DecodeError("too_large", f"video {w}x{h} > max_pixels={max_pixels}")
        declared = int(stream.frames or 0)
        if declared > max_source_frames:
            raise DecodeError("too_many_frames", f"{declared} frames > max_source_frames={max_source_frames}")
        rate = stream.average_rate or stream.guessed_rate
        src_fps = float(rate) if rate else DEFAULT_FPS
        duration = _duration(stream, container, declared, src_fps)
        start = 0.0
        if rng is not None and max_seconds is not None and duration > max_seconds:
            start = rng.uniform(0.0, duration - max_seconds)
        frames = _sample(container, stream, src_fps, start, fps=fps, stride=stride,
                         max_seconds=max_seconds, max_frames=max_frames)
    if not frames:
        raise DecodeError("no_frames", f"0 frames decoded (declared {declared})")
    out_fps = fps if fps is not None else src_fps / stride
    return Decoded(np.stack(frames), fps=min(out_fps, src_fps), source_fps=src_fps, source_frames=declared)


def _cut_box(data: bytes) -> bool:
    """True if a top-level ISO-BMFF box (ftyp, mdat, moov, ...) runs past the end of the data."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 1 and pos + 16 <= len(data):  # 64-bit "largesize"
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size == 0:  # box runs to the end of the file
            return False
        if size < 8:
            return True
        pos += size
    return pos != len(data)


def _duration(stream, container, declared: int, src_fps: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6  # AV_TIME_BASE
    return declared / src_fps


def _sample(container, stream, src_fps, start, *, fps, stride, max_seconds, max_frames) -> list[np.ndarray]:
    import av

    end = math.inf if max_seconds is None else start + max_seconds
    cap = math.inf if max_frames is None else max_frames
    frames: list[np.ndarray] = []
    last_slot = -1
    try:
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else i / src_fps
            if t < start - 1e-6:
                continue
            if t >= end - 1e-6 or len(frames) >= cap:
                break
            if fps is None:
                keep = i % stride == 0
            else:  # first frame in each 1/fps slot; a slower source never gets duplicates
                slot = math.floor((t - start) * fps + 1e-6)
                keep, last_slot = slot > last_slot, max(slot, last_slot)
            if keep:
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, ValueError, EOFError) as e:  # truncated mid-stream
        raise DecodeError("corrupt_video", f"{type(e).__name__} after {len(frames)} frames: {e}") from None
    return frames


def decode_latent(data: bytes) -> torch.Tensor:
    """`<key>.latent.safetensors` bytes -> float32 latent [C', T', H', W'] (safetensors: no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
    except (SafetensorError, ValueError, OSError) as e:
        raise DecodeError("corrupt_latent", f"{type(e).__name__}: {e}") from None
    latent = tensors.get("latent")
    if latent is None or latent.ndim != 4 or not latent.is_floating_point():
        got = {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()}
        raise DecodeError("corrupt_latent", f"expected a float tensor 'latent' [C, T, H, W], got {got}")
    return latent.float()


def to_video_CTHW(frames_THWC: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, C] -> float32 [C, T, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC)).permute(3, 0, 1, 2)
    return x.float().div_(127.5).sub_(1.0)


def from_video_CTHW(video_CTHW: torch.Tensor) -> np.ndarray:
    """The inverse of `to_video_CTHW`: float [C, T, H, W] in [-1, 1] (values outside are
    clipped), on any device, with or without grad -> uint8 [T, H, W, C]."""
    if video_CTHW.ndim != 4:
        raise ValueError(f"expected a [C, T, H, W] video, got shape {tuple(video_CTHW.shape)}")
    x = ((video_CTHW.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()
