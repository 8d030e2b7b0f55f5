"""Encode frames to mp4 (PyAV) and images (PIL): for the synthetic dataset and tests.

libx264 when the PyAV wheel has it (the PyPI wheels do), else mpeg4. One encoder
thread. The output bytes are not promised to repeat for the same frames: some x264
builds write different bytes (and slightly different pixels) from one run to the
next, so nothing here or in the tests relies on it. yuv420p subsamples chroma 2x2,
so width and height must be even.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np


@cache
def video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(frames_THWC: np.ndarray, *, fps: int, crf: int = 20) -> bytes:
    import av

    t, h, w, c = frames_THWC.shape
    if c != 3 or frames_THWC.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames_THWC.dtype} {frames_THWC.shape}")
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even sizes, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        if video_codec() == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            stream.bit_rate = 8 * w * h * fps  # ~1 bit/pixel: mpeg4's default is blurry
        for frame in frames_THWC:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_image(frame_HWC: np.ndarray, *, fmt: str = "png", quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(frame_HWC)
    if fmt == "png":
        im.save(buf, format="PNG", optimize=False)
    elif fmt in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image format must be 'png' or 'jpg', got {fmt!r}")
    return buf.getvalue()
