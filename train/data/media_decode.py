"""Decode shard media at native size: mp4 via PyAV, jpg/png via PIL; probe sizes from headers.

Frames are chosen from the container's timestamps (not from a frame counter), so
variable-frame-rate files resample correctly: output frame k is the first source
frame at or after start + k / fps. A clip that starts late in a long video is reached
by a seek to the keyframe before it, not by decoding everything before it. Nothing is
resized here; the packer's token budget does that. Failures raise DecodeError with a
short `.reason` for skip counts: any exception while parsing untrusted bytes is one.

Memory. `probe_video` / `probe_image` read headers only (no frame is decoded), and
`verify_video` decodes frames one at a time keeping none, so their peak memory does not
grow with a clip's length. `decode_video` holds the frames it returns, at most
max_frames (or max_seconds x fps) of them, plus one frame in flight.

Pixels. Every input comes out as uint8 RGB the way a viewer shows it:
  * 16-bit greyscale (PIL "I;16*", "I") is scaled by 255/65535, float ("F") from [0, 1]
    (or [0, 255] when its values exceed 1); other modes (1, L, P, CMYK, YCbCr, ...) go
    through PIL's conversion;
  * transparency (RGBA, LA, P with a transparent index, alpha pix_fmts in video) is
    composited onto black (ALPHA_BACKGROUND);
  * JPEG EXIF orientation and an mp4 track's display rotation are applied, so H and W
    are the displayed ones, in the probe as in the decode;
  * video of any pix_fmt (10-bit, yuv444, gray, ...) is converted by swscale.
"""

from __future__ import annotations

import io
import math
import os
import random
import struct
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_FPS = 24.0  # only when a container declares no rate at all
VIDEO_EXTS = ("mp4",)
IMAGE_EXTS = ("jpg", "jpeg", "png")
LATENT_EXT = "latent.safetensors"  # a pre-encoded VAE latent (train/data/latent_shards.py), tensor "latent"
# Pillow formats we parse, whatever the extension says; anything else (TIFF, PSD, EPS,
# which runs Ghostscript, ...) is refused before its plugin sees the bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # JPEG covers MPO (camera multi-picture)
VIDEO_FORMAT = "mp4"  # ffmpeg's mov/mp4 demuxer only: a playlist or other container never gets parsed
ALPHA_BACKGROUND = 0  # transparent pixels are composited onto black

Media = bytes | bytearray | memoryview | str | os.PathLike


class DecodeError(ValueError):
    """Unusable media; `reason` is the short skip reason, `message` the detail."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.reason, self.message))


@dataclass
class Decoded:
    frames_THWC: np.ndarray  # uint8 RGB
    fps: float  # rate of the returned frames (0.0 for an image)
    source_fps: float
    source_frames: int  # declared by the container (0 if unknown)


@dataclass(frozen=True)
class VideoInfo:
    """A sample's native size from its headers, without decoding a frame.

    frames: the frame count the container declares (its index); when it declares none,
        the packets are counted (demuxed, not decoded). 1 for an image.
    height, width: as displayed (after EXIF orientation or the track's rotation).
    fps: the average frame rate (0.0 for an image); duration: seconds (0.0 for an image).
    codec: "h264", "PNG", ...; pix_fmt: "yuv420p", or the PIL mode ("RGB", "I;16", ...).
    """

    frames: int
    height: int
    width: int
    fps: float
    duration: float
    codec: str
    pix_fmt: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W) at native size."""
        return (self.frames, self.height, self.width)


# --------------------------------------------------------------------------- probes


def probe_video(data: Media) -> VideoInfo:
    """mp4 bytes (or a path) -> VideoInfo from the container's headers; DecodeError if unreadable.

    Cost: the demuxer reads the index (and, for a file without a declared frame count,
    every packet header); no frame is decoded, so memory does not grow with length."""
    try:
        with _open_video(data) as container:
            stream = _video_stream(container, data)
            w, h = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else DEFAULT_FPS
            frames = int(stream.frames or 0)
            if frames == 0:  # no frame count in the index: count packets, still no decoding
                frames = sum(1 for p in container.demux(stream) if p.size)
            duration = _duration(stream, container, frames, fps)
            codec, pix_fmt = stream.codec_context.name, str(stream.codec_context.pix_fmt or "")
    except DecodeError:
        raise
    except Exception as e:  # untrusted bytes: whatever the parser raises means "unreadable"
        raise DecodeError("corrupt_video", f"{type(e).__name__}: {e}") from None
    if w <= 0 or h <= 0:
        raise DecodeError("corrupt_video", f"video stream of size {w}x{h}")
    if _quarter_turns(_mp4_rotation(data)) % 2:
        w, h = h, w
    return VideoInfo(frames=frames, height=h, width=w, fps=fps, duration=duration, codec=codec, pix_fmt=pix_fmt)


def probe_image(data: Media) -> VideoInfo:
    """jpg/png bytes (or a path) -> VideoInfo (frames=1) from the header; DecodeError if unreadable."""
    try:
        with _open_image(data) as im:
            w, h = im.size
            if _exif_orientation(im) in (5, 6, 7, 8):  # a quarter turn: displayed sides swap
                w, h = h, w
            return VideoInfo(frames=1, height=h, width=w, fps=0.0, duration=0.0, codec=str(im.format),
                             pix_fmt=im.mode)
    except Exception as e:
        raise DecodeError("corrupt_image", f"{type(e).__name__}: {e}") from None


def probe(data: Media, ext: str) -> VideoInfo:
    """probe_video for the video extensions, probe_image for the image ones."""
    ext = ext.lower().lstrip(".")
    if ext in VIDEO_EXTS:
        return probe_video(data)
    if ext in IMAGE_EXTS:
        return probe_image(data)
    raise DecodeError("unsupported_type", f"extension {ext!r}: expected one of {VIDEO_EXTS + IMAGE_EXTS}")


# --------------------------------------------------------------------------- images


def decode_image(data: Media, *, max_pixels: int) -> Decoded:
    """jpg/png bytes (or a path) -> uint8 [1, H, W, 3] as displayed (see the module docstring)."""
    from PIL import Image, ImageOps

    try:
        with _open_image(data) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError("too_large", f"image {w}x{h} > max_pixels={max_pixels}")
            if w == 0 or h == 0:
                raise DecodeError("no_frames", f"image of size {w}x{h}")
            rgb = image_to_rgb(ImageOps.exif_transpose(im))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own cap, above ours only when max_pixels is huge
        raise DecodeError("too_large", str(e)) from None
    except Exception as e:  # untrusted bytes: whatever the parser raises means "unreadable"
        raise DecodeError("corrupt_image", f"{type(e).__name__}: {e}") from None
    return Decoded(rgb[None], fps=0.0, source_fps=0.0, source_frames=1)


def image_to_rgb(im) -> np.ndarray:
    """A PIL image of any mode -> uint8 [H, W, 3] (16-bit and float scaled, alpha composited)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit samples (PNG, TIFF); "I" is how Pillow widens them
        grey = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        return _grey_to_rgb(grey)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise DecodeError("nonfinite", "float image holds NaN or inf")
        return _grey_to_rgb(a * 255.0 if a.size and a.max() <= 1.0 else a)
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        return composite(np.asarray(im.convert("RGBA")))
    if mode == "RGB":
        return np.array(im)  # a writable copy: torch.from_numpy warns on read-only
    try:
        return np.array(im.convert("RGB"))
    except ValueError as e:  # a mode Pillow cannot turn into RGB (e.g. "LAB" on some builds)
        raise DecodeError("unsupported_mode", f"image mode {mode!r}: {e}") from None


def composite(rgba_HWC4: np.ndarray) -> np.ndarray:
    """uint8 RGBA -> uint8 RGB over ALPHA_BACKGROUND (straight, not premultiplied, alpha)."""
    rgb = rgba_HWC4[..., :3].astype(np.uint16)
    a = rgba_HWC4[..., 3:4].astype(np.uint16)
    out = (rgb * a + ALPHA_BACKGROUND * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    g = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))  # EXIF Orientation
    except Exception:  # a broken EXIF block: shown as stored, like most viewers do
        return 1


# --------------------------------------------------------------------------- videos


def decode_video(
    data: Media,
    *,
    fps: float | None,
    stride: int = 1,
    max_seconds: float | None,
    max_frames: int | None,
    max_pixels: int,
    max_source_frames: int,
    rng: random.Random | None = None,
    start: float | None = None,
) -> Decoded:
    """mp4 bytes (or a path) -> uint8 [T, H, W, 3]. rng picks the clip start of a long video (None: from 0);
    start: the clip start in seconds, chosen already (e.g. by `clip_frames` when the size was planned)."""
    try:
        with _open_video(data) as container:
            stream = _video_stream(container, data)
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > max_pixels:
                raise DecodeError("too_large", f"video {w}x{h} > max_pixels={max_pixels}")
            declared = int(stream.frames or 0)
            if declared > max_source_frames:
                raise DecodeError("too_many_frames", f"{declared} frames > max_source_frames={max_source_frames}")
            rate = stream.average_rate or stream.guessed_rate
            src_fps = float(rate) if rate else DEFAULT_FPS
            duration = _duration(stream, container, declared, src_fps)
            if start is None:
                start = clip_start(duration, max_seconds, rng)
            frames = _sample(container, stream, src_fps, start, fps=fps, stride=stride,
                             max_seconds=max_seconds, max_frames=max_frames, max_pixels=max_pixels)
    except DecodeError:
        raise
    except Exception as e:  # untrusted bytes: whatever the demuxer or decoder raises means "corrupt"
        raise DecodeError("corrupt_video", f"{type(e).__name__}: {e}") from None
    if not frames:
        raise DecodeError("no_frames", f"0 frames decoded (declared {declared})")
    out_fps = fps if fps is not None else src_fps / stride
    return Decoded(np.stack(frames), fps=min(out_fps, src_fps), source_fps=src_fps, source_frames=declared)


def clip_start(duration: float, max_seconds: float | None, rng: random.Random | None) -> float:
    """Where a clip of at most max_seconds starts in a video of `duration` seconds: drawn from
    rng when the video is longer (one draw), else 0."""
    if rng is not None and max_seconds is not None and duration > max_seconds:
        return rng.uniform(0.0, duration - max_seconds)
    return 0.0


def clip_frames(info: VideoInfo, start: float, *, fps: float | None, stride: int, max_seconds: float | None,
                max_frames: int | None) -> int:
    """The frames `decode_video` returns for this clip, from the headers alone (constant frame
    rate assumed: frame k at k / info.fps). Lets a stream plan a sample's size before decoding it."""
    end = info.duration if max_seconds is None else min(info.duration, start + max_seconds)
    src = max(info.fps, 1e-9)
    first, last = math.ceil(start * src - 1e-6), math.ceil(end * src - 1e-6)  # frames k with start <= k/src < end
    last = min(last, info.frames) if info.frames else last
    n = max(last - first, 0)
    if fps is None:
        count = -(-n // stride)
    elif n:
        times = np.arange(first, last) / src
        count = int(np.unique(np.floor((times - start) * fps + 1e-6)).size)  # one frame per 1/fps slot
    else:
        count = 0
    return count if max_frames is None else min(count, max_frames)


def verify_video(data: Media, *, max_pixels: int) -> int:
    """Decode every frame, one at a time, keeping none: the number of frames, or DecodeError.
    Proves a file is readable to its end at the memory of one frame."""
    n = 0
    try:
        with _open_video(data) as container:
            stream = _video_stream(container, data)
            size = None
            for frame in container.decode(stream):
                size = _check_frame(frame, size, max_pixels, n)
                n += 1
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError("corrupt_video", f"{type(e).__name__} after {n} frames: {e}") from None
    if n == 0:
        raise DecodeError("no_frames", "0 frames decoded")
    return n


def _open_video(data: Media):
    import av

    return av.open(_as_file(data), format=VIDEO_FORMAT)


def _video_stream(container, data: Media):
    if not list(container.streams):
        # ffmpeg opens an mp4 cut before its index (moov atom, written last by default)
        # as an empty container; an index with no tracks is a genuinely 0-frame file
        if _cut_box(data):
            raise DecodeError("corrupt_video", "no streams; the file ends inside an mp4 box (truncated)")
        raise DecodeError("no_frames", "container holds no streams")
    if not container.streams.video:
        raise DecodeError("no_video", "container has no video stream")
    return container.streams.video[0]


def _duration(stream, container, declared: int, src_fps: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6  # AV_TIME_BASE
    return declared / src_fps


def _sample(container, stream, src_fps, start, *, fps, stride, max_seconds, max_frames,
            max_pixels) -> list[np.ndarray]:
    end = math.inf if max_seconds is None else start + max_seconds
    cap = math.inf if max_frames is None else max_frames
    frames: list[np.ndarray] = []
    last_slot, size, origin, j = -1, None, 0.0, 0
    if start > 0 and stream.time_base is not None:  # to the keyframe before start: no decoding of the skipped part
        container.seek(int(start / stream.time_base) + (stream.start_time or 0), stream=stream, backward=True)
        origin = start  # frames without timestamps are counted from here
    for i, frame in enumerate(container.decode(stream)):
        size = _check_frame(frame, size, max_pixels, i)
        t = frame.time if frame.time is not None else origin + i / src_fps
        if t < start - 1e-6:
            continue
        if t >= end - 1e-6 or len(frames) >= cap:
            break
        if fps is None:  # every stride-th frame of the clip
            keep, j = j % stride == 0, j + 1
        else:  # first frame in each 1/fps slot; a slower source never gets duplicates
            slot = math.floor((t - start) * fps + 1e-6)
            keep, last_slot = slot > last_slot, max(slot, last_slot)
        if keep:
            frames.append(frame_to_rgb(frame))
    return frames


def _check_frame(frame, size, max_pixels: int, index: int):
    """Every frame is checked, not just the header: a stream may change size midway."""
    now = (frame.width, frame.height)
    if size is not None and now != size:
        raise DecodeError("size_change", f"frame {index} is {now[0]}x{now[1]}, earlier frames {size[0]}x{size[1]}")
    if now[0] * now[1] > max_pixels:
        raise DecodeError("too_large", f"frame {index} is {now[0]}x{now[1]} > max_pixels={max_pixels}")
    return now


def frame_to_rgb(frame) -> np.ndarray:
    """A PyAV VideoFrame of any pix_fmt -> uint8 [H, W, 3] as displayed (alpha composited, rotation applied)."""
    fmt = frame.format
    if fmt.has_palette or any(c.is_alpha for c in fmt.components):
        rgb = composite(frame.to_ndarray(format="rgba"))
    else:
        rgb = frame.to_ndarray(format="rgb24")
    k = _quarter_turns(getattr(frame, "rotation", 0) or 0)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _quarter_turns(degrees: float) -> int:
    """Counter-clockwise display rotation in degrees -> quarter turns for np.rot90 (0..3)."""
    return int(round(degrees / 90.0)) % 4


def _open_image(data: Media):
    from PIL import Image

    Image.init()  # registers every plugin once, so `formats` can name them (WEBP, ...)
    return Image.open(_as_file(data), formats=IMAGE_FORMATS)  # lazy: reads the header only


def _as_file(data: Media):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(data))
    return os.fspath(data)


# --------------------------------------------------------------------------- mp4 boxes


def _boxes(buf: bytes, pos: int, end: int):
    """(type, payload start, payload end) of the ISO-BMFF boxes in buf[pos:end]."""
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = struct.unpack(">Q", buf[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def _mp4_rotation(data: Media) -> float:
    """The first video track's display rotation in degrees counter-clockwise (0 if none), from
    its tkhd matrix, read from the bytes: the same angle PyAV reports as VideoFrame.rotation."""
    try:
        buf = data if isinstance(data, (bytes, bytearray)) else _moov_bytes(data)
        for kind, a, b in _boxes(buf, 0, len(buf)):
            if kind != b"moov":
                continue
            for tk, ta, tb in _boxes(buf, a, b):
                if tk != b"trak":
                    continue
                parts = {k: (x, y) for k, x, y in _boxes(buf, ta, tb)}
                if b"mdia" not in parts or b"tkhd" not in parts or not _is_video(buf, *parts[b"mdia"]):
                    continue
                x, _ = parts[b"tkhd"]
                version = buf[x]
                m = x + (4 + (32 if version == 1 else 20) + 8 + 8)  # to the 3x3 matrix
                a_, b_ = struct.unpack(">ii", buf[m : m + 8])
                return -math.degrees(math.atan2(b_, a_)) % 360 if (a_ or b_) else 0.0
    except Exception:  # a broken box: no rotation, as a player would show it
        return 0.0
    return 0.0


def _is_video(buf: bytes, a: int, b: int) -> bool:
    for kind, x, _ in _boxes(buf, a, b):
        if kind == b"hdlr":
            return buf[x + 8 : x + 12] == b"vide"
    return False


def _moov_bytes(path: Media) -> bytes:
    """The top-level boxes of a file up to and including moov, seeking over mdat (no media read)."""
    out = bytearray()
    with open(path, "rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return bytes(out)
            size, kind = struct.unpack(">I4s", head)
            extra = b""
            if size == 1:
                extra = f.read(8)
                size = struct.unpack(">Q", extra)[0]
            if kind == b"moov":
                return bytes(out) + head + extra + f.read(max(size - 8 - len(extra), 0))
            if size < 8:
                return bytes(out)
            f.seek(size - 8 - len(extra), os.SEEK_CUR)


def _cut_box(data: Media) -> bool:
    """True if a top-level ISO-BMFF box (ftyp, mdat, moov, ...) runs past the end of the data."""
    f = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else open(data, "rb")
    with f:
        total = f.seek(0, os.SEEK_END)
        pos = 0
        while pos + 8 <= total:
            f.seek(pos)
            head = f.read(16)
            size = int.from_bytes(head[:4], "big")
            if size == 1 and len(head) == 16:  # 64-bit "largesize"
                size = int.from_bytes(head[8:16], "big")
            if size == 0:  # box runs to the end of the file
                return False
            if size < 8:
                return True
            pos += size
        return pos != total


# --------------------------------------------------------------------------- latents and tensors


def probe_latent(data: bytes) -> tuple[int, int, int, int]:
    """The shape [C', T', H', W'] of a `<key>.latent.safetensors` from its JSON header alone."""
    import json
    import struct

    try:
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        if n > len(data) - 8:
            raise ValueError(f"header of {n} bytes in {len(data)}")
        header = json.loads(bytes(data[8 : 8 + n]))
        shape = [int(v) for v in header["latent"]["shape"]]
    except Exception as e:
        raise DecodeError("corrupt_latent", f"{type(e).__name__}: {e}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise DecodeError("corrupt_latent", f"expected a non-empty 'latent' [C, T, H, W], got shape {shape}")
    return tuple(shape)


def decode_latent(data: bytes) -> torch.Tensor:
    """`<key>.latent.safetensors` bytes -> float32 latent [C', T', H', W'] (safetensors: no pickle)."""
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
    except Exception as e:  # untrusted bytes: SafetensorError, ValueError, ... all mean "corrupt"
        raise DecodeError("corrupt_latent", f"{type(e).__name__}: {e}") from None
    latent = tensors.get("latent")
    if latent is None or latent.ndim != 4 or not latent.is_floating_point() or latent.numel() == 0:
        got = {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()}
        raise DecodeError("corrupt_latent", f"expected a non-empty float tensor 'latent' [C, T, H, W], got {got}")
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
