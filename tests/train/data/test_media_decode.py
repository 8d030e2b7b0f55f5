"""Media decoding (issue 15, items 2 and 5): every PIL mode and pix_fmt comes out as displayed or is
a counted skip with a reason; sizes come from headers without decoding; clip starts seek."""

from __future__ import annotations

import io
import random

import av
import numpy as np
import pytest
from PIL import Image

from patchpack.train.data.media_decode import (
    DecodeError,
    decode_image,
    decode_video,
    image_to_rgb,
    probe,
    probe_image,
    probe_video,
    verify_video,
)
from patchpack.train.data.media_encode import encode_mp4

BIG = 1 << 40


def _img(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(data) -> np.ndarray:
    return decode_image(data, max_pixels=BIG).frames_THWC[0]


# --------------------------------------------------------------------------- images


def test_16_bit_greyscale_is_scaled_not_clipped():
    """The issue's case: a 16-bit PNG of mean 128 (in 8-bit terms) came out at 254."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    big_endian = Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes())
    for im in (Image.fromarray(ramp), big_endian):
        out = _rgb(_img(im))
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        want = np.rint(ramp / 257.0)
        assert np.abs(out[..., 0].astype(int) - want).max() <= 1
        assert abs(out.mean() - 127.5) < 1  # not 254


@pytest.mark.parametrize("mode, fill, fmt, want", [
    ("1", 1, "PNG", (255, 255, 255)),
    ("L", 77, "PNG", (77, 77, 77)),
    ("L", 77, "JPEG", (77, 77, 77)),
    ("RGB", (10, 200, 30), "PNG", (10, 200, 30)),
    ("RGBA", (10, 200, 30, 255), "PNG", (10, 200, 30)),  # opaque: as is
    ("RGBA", (10, 200, 30, 0), "PNG", (0, 0, 0)),  # transparent: the black background
    ("RGBA", (200, 100, 50, 128), "PNG", (100, 50, 25)),  # half: composited
    ("LA", (200, 0), "PNG", (0, 0, 0)),
    ("LA", (200, 255), "PNG", (200, 200, 200)),
    ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),
    ("RGB", (10, 200, 30), "WEBP", None),
    ("RGB", (10, 200, 30), "BMP", (10, 200, 30)),
    ("RGB", (10, 200, 30), "GIF", None),
])
def test_every_mode_comes_out_as_displayed(mode, fill, fmt, want):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = _rgb(_img(Image.new(mode, (6, 4), fill), fmt, **kw))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    if want is not None:
        assert np.abs(out.astype(int) - np.array(want)).max() <= 3, out[0, 0]


def test_a_palette_with_a_transparent_index():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    out = _rgb(_img(p, transparency=1))  # index 1 (green) is transparent
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)
    rgb = Image.new("RGB", (4, 4), (9, 9, 9))  # tRNS on an RGB image: that colour is transparent
    assert tuple(_rgb(_img(rgb, transparency=(9, 9, 9)))[0, 0]) == (0, 0, 0)


def test_integer_and_float_modes():
    assert image_to_rgb(Image.fromarray(np.full((2, 2), 65535, np.int32), "I"))[0, 0].tolist() == [255] * 3
    assert image_to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32), "F"))[0, 0].tolist() == [128] * 3
    assert image_to_rgb(Image.fromarray(np.full((2, 2), 300.0, np.float32), "F"))[0, 0].tolist() == [255] * 3
    with pytest.raises(DecodeError) as e:
        image_to_rgb(Image.fromarray(np.full((2, 2), np.nan, np.float32), "F"))
    assert e.value.reason == "nonfinite"
    assert image_to_rgb(Image.new("YCbCr", (2, 2), (128, 128, 128))).shape == (2, 2, 3)


def test_exif_orientation_in_probe_and_decode():
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 5, 10))  # a white band on the left
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _img(im, "JPEG", exif=exif.tobytes(), quality=95)
    assert probe_image(data).shape == (1, 20, 10)
    out = _rgb(data)
    assert out.shape == (20, 10, 3) and out[:5].mean() > 200 and out[-5:].mean() < 50  # the band is now on top


def test_formats_we_do_not_parse_and_garbage_are_counted_skips():
    tiff = _img(Image.new("RGB", (4, 4)), "TIFF")
    for data in (tiff, b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"\xff\xd8\xff" + bytes(50)):
        with pytest.raises(DecodeError) as e:
            decode_image(data, max_pixels=BIG)
        assert e.value.reason == "corrupt_image"
    png = _img(Image.new("L", (300, 200)))
    with pytest.raises(DecodeError) as e:  # refused from the header, before any pixel is decoded
        decode_image(png, max_pixels=300 * 200 - 1)
    assert e.value.reason == "too_large"


# --------------------------------------------------------------------------- videos


def _encode(codec, pix_fmt, *, n=3, h=16, w=16, value=128, alpha=None, rotation=None, fmt="mp4"):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format=fmt) as c:
            s = c.add_stream(codec, rate=4)
            s.width, s.height, s.pix_fmt = w, h, pix_fmt
            if rotation is not None:
                s.set_display_rotation(rotation)
            for _ in range(n):
                if alpha is None:
                    frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), value, np.uint8), format="rgb24")
                else:
                    a = np.full((h, w, 4), value, np.uint8)
                    a[..., 3] = alpha
                    frame = av.VideoFrame.from_ndarray(a, format="rgba")
                for p in s.encode(frame):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    except (av.FFmpegError, ValueError) as e:
        pytest.skip(f"{codec} cannot write {pix_fmt} here: {e}")
    return buf.getvalue()


def _dec(data, **kw):
    return decode_video(data, fps=None, max_seconds=None, max_frames=None, max_pixels=BIG, max_source_frames=BIG,
                        **kw).frames_THWC


@pytest.mark.parametrize("codec, pix_fmt, kw, want", [
    ("libx264", "yuv420p10le", {}, 128),  # 10-bit
    ("libx264", "yuv444p", {}, 128),
    ("libx265", "gray", {}, 128),
    ("png", "gray16be", {}, 128),  # 16-bit grey, lossless
    ("png", "rgb48be", {}, 128),
    ("png", "rgba", {"alpha": 0}, 0),  # fully transparent: the black background, as for images
    ("png", "rgba", {"alpha": 255}, 128),
    ("qtrle", "argb", {"alpha": 0, "fmt": "mov"}, 0),  # a .mov inside a .mp4 name: the same demuxer
    ("prores_ks", "yuva444p10le", {"alpha": 0, "fmt": "mov"}, 0),
])
def test_video_pix_fmts_come_out_as_displayed(codec, pix_fmt, kw, want):
    frames = _dec(_encode(codec, pix_fmt, **kw))
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    assert abs(float(frames.mean()) - want) <= 4, (codec, pix_fmt, frames.mean())


def test_rotation_is_applied_and_probe_agrees():
    for rot in (90, -90, 180):
        data = _encode("libx264", "yuv420p", h=16, w=32, rotation=rot)
        info, frames = probe_video(data), _dec(data)
        assert frames.shape[1:3] == info.shape[1:] == ((32, 16) if rot % 180 else (16, 32))


def test_probe_reads_headers_only(tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (10, 24, 40, 3), dtype=np.uint8)
    data = encode_mp4(video, fps=5)
    info = probe_video(data)
    assert info.shape == (10, 24, 40) and info.fps == 5.0 and abs(info.duration - 2.0) < 0.05
    assert info.codec in ("h264", "mpeg4") and info.pix_fmt == "yuv420p"
    (tmp_path / "v.mp4").write_bytes(data)
    assert probe(tmp_path / "v.mp4", "mp4") == info == probe(data, ".MP4")  # a path or bytes
    # the compressed frames zeroed, the index kept: the probe still answers (it decodes nothing),
    # verify_video and decode_video find the damage
    mdat = data.index(b"mdat") + 4
    broken = data[:mdat] + bytes(len(data) - mdat - 1500) + data[-1500:]
    if data.index(b"moov") < mdat:
        broken = data[:mdat] + bytes(len(data) - mdat)
    assert probe_video(broken).shape == (10, 24, 40)
    with pytest.raises(DecodeError):
        verify_video(broken, max_pixels=BIG)
    assert verify_video(data, max_pixels=BIG) == 10
    with pytest.raises(DecodeError) as e:
        verify_video(data, max_pixels=100)
    assert e.value.reason == "too_large"
    assert probe_image(_img(Image.new("RGB", (7, 3)))).shape == (1, 3, 7)
    with pytest.raises(DecodeError) as e:
        probe(data, "gif")
    assert e.value.reason == "unsupported_type"


def test_a_random_clip_start_seeks_and_gives_the_frames_a_full_decode_would():
    video = np.zeros((64, 16, 16, 3), np.uint8)
    video[:] = np.arange(64, dtype=np.uint8)[:, None, None, None] * 3
    data = encode_mp4(video, fps=8)  # 8 s
    full = _dec(data)
    for seed in range(4):
        start = random.Random(seed).uniform(0.0, 8.0 - 1.0)
        first = int(np.ceil(start * 8 - 1e-6))
        clip = decode_video(data, fps=None, max_seconds=1.0, max_frames=None, max_pixels=BIG,
                            max_source_frames=BIG, rng=random.Random(seed)).frames_THWC
        assert clip.shape[0] == 8
        assert np.array_equal(clip, full[first : first + 8]), seed
