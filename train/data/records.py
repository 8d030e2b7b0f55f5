"""One webdataset record -> a sample: caption pick, media decode (or probe), metadata.

A record is what `reader.read_shard` yields: {member extension: bytes, "__key__", "__url__"}.
`RecordDecoder` checks its json and caption and picks one caption (seeded). Then either
  decode   the media at native size (PyAV / Pillow), or a pre-encoded VAE latent
           (`<key>.latent.safetensors`, latent_shards.py), which the packer patchifies
           exactly as it would pixels; or
  probe    the native (T, H, W) from the headers alone, as an UnsizedSample that holds the
           still-encoded bytes: size-aware packing plans its size first and decodes it once,
           at that size, through `decode_planned`.
Anything unusable raises DecodeError with a short reason, which the streams count as a skip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from patchpack.packer import UnsizedSample

from .config import DataConfig
from .media_decode import (
    IMAGE_EXTS,
    LATENT_EXT,
    VIDEO_EXTS,
    DecodeError,
    clip_frames,
    clip_start,
    decode_image,
    decode_latent,
    decode_video,
    probe_image,
    probe_latent,
    probe_video,
    to_video_CTHW,
)

__all__ = ["MEDIA_EXTS", "RecordDecoder", "record_key", "record_to_state", "record_from_state"]

MEDIA_EXTS = VIDEO_EXTS + IMAGE_EXTS


def record_key(rec: Mapping) -> str:
    """'<shard stem>/<sample key>': how skips and batches name a sample."""
    return f"{Path(str(rec.get('__url__', ''))).stem}/{rec.get('__key__', '')}"


class RecordDecoder:
    """Decodes records as DataConfig says; `rng` picks captions and the clip start of long videos."""

    def __init__(self, data: DataConfig, rng: random.Random) -> None:
        self.data, self.rng = data, rng

    def decode(self, rec: dict) -> tuple[torch.Tensor, dict]:
        """(float video [C, T, H, W] in [-1, 1], or a latent [C', T', H', W'], meta); DecodeError if unusable."""
        info, caption = self._caption(rec)
        if LATENT_EXT in rec:  # a latent shard: the VAE already decoded, sized and encoded it
            latent = decode_latent(rec[LATENT_EXT])
            return latent, self._latent_meta(info, caption, list(latent.shape[1:]))
        ext = self._media(rec)
        d = self.data
        if ext in VIDEO_EXTS:
            dec = decode_video(rec[ext], fps=d.fps, stride=d.stride, max_seconds=d.max_seconds,
                               max_frames=d.max_frames, max_pixels=d.max_pixels,
                               max_source_frames=d.max_source_frames,
                               rng=self._start_rng())
        else:
            dec = decode_image(rec[ext], max_pixels=d.max_pixels)
        t, h, w = dec.frames_THWC.shape[:3]
        meta = {"caption": caption, "fps": dec.fps, "frames": t, "height": h, "width": w, **_attrs(info)}
        return to_video_CTHW(dec.frames_THWC), meta

    def probe(self, rec: dict) -> UnsizedSample:
        """The record as an UnsizedSample for size-aware packing: native (T, H, W) from the media's
        headers (no frame decoded), the media bytes as payload, and in meta the caption and the
        clip start, chosen now with the same draws `decode` makes. `decode_planned` decodes it."""
        info, caption = self._caption(rec)
        key = record_key(rec)
        if LATENT_EXT in rec:
            _, t, h, w = probe_latent(rec[LATENT_EXT])
            meta = self._latent_meta(info, caption, [t, h, w])
            return UnsizedSample((t, h, w), rec[LATENT_EXT], key, {**meta, "media": LATENT_EXT})
        ext = self._media(rec)
        d = self.data
        if ext in VIDEO_EXTS:
            head = probe_video(rec[ext])
            if head.height * head.width > d.max_pixels:
                raise DecodeError("too_large", f"video {head.width}x{head.height} > max_pixels={d.max_pixels}")
            if head.frames > d.max_source_frames:
                raise DecodeError("too_many_frames", f"{head.frames} frames > max_source_frames={d.max_source_frames}")
            start = clip_start(head.duration, d.max_seconds, self._start_rng())
            t = clip_frames(head, start, fps=d.fps, stride=d.stride, max_seconds=d.max_seconds,
                            max_frames=d.max_frames)
            if t < 1:
                raise DecodeError("no_frames", f"the clip from {start:.2f} s holds no frame ({head})")
            fps = min(d.fps, head.fps) if d.fps is not None else head.fps / d.stride
            meta = {"caption": caption, "fps": fps, "frames": t, "height": head.height, "width": head.width,
                    "media": ext, "clip_start": start}
        else:
            head = probe_image(rec[ext])
            if head.height * head.width > d.max_pixels:
                raise DecodeError("too_large", f"image {head.width}x{head.height} > max_pixels={d.max_pixels}")
            t = 1
            meta = {"caption": caption, "fps": 0.0, "frames": 1, "height": head.height, "width": head.width,
                    "media": ext}
        return UnsizedSample((t, head.height, head.width), rec[ext], key, {**meta, **_attrs(info)})

    def decode_planned(self, sample: UnsizedSample, size: tuple[int, int, int]) -> torch.Tensor:
        """StreamPacker's decode for `probe`'s samples: the clip's first size[0] frames at native
        resolution (the packer resizes), or the latent; SampleError with the decoder's reason."""
        from patchpack.packer import SampleError

        d, meta, media = self.data, sample.meta, sample.meta.get("media")
        try:
            if media == LATENT_EXT:
                return decode_latent(sample.payload)
            if media in VIDEO_EXTS:
                dec = decode_video(sample.payload, fps=d.fps, stride=d.stride, max_seconds=d.max_seconds,
                                   max_frames=size[0], max_pixels=d.max_pixels, max_source_frames=d.max_source_frames,
                                   start=float(meta["clip_start"]))
            else:
                dec = decode_image(sample.payload, max_pixels=d.max_pixels)
        except DecodeError as e:
            raise SampleError(e.reason, str(e)) from None
        return to_video_CTHW(dec.frames_THWC)

    # -- the parts decode and probe share

    def _caption(self, rec: dict) -> tuple[dict, str]:
        """The record's json and one of its captions (seeded pick)."""
        if "json" not in rec:
            raise DecodeError("no_json", "sample has no .json member")
        try:
            info = json.loads(rec["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DecodeError("bad_json", str(e)) from None
        if not isinstance(info, dict) or "caption" not in info:
            raise DecodeError("no_caption", "json has no 'caption'")
        caps = info["caption"]
        caps = [caps] if isinstance(caps, str) else caps if isinstance(caps, list) else []
        caps = [c for c in caps if isinstance(c, str) and c.strip()]
        if not caps:
            raise DecodeError("empty_caption", f"caption {info['caption']!r}")
        caption = caps[self.rng.randrange(len(caps))] if len(caps) > 1 else caps[0]
        return info, caption

    def _start_rng(self) -> random.Random | None:
        """What draws a long video's clip start (decode and probe draw it alike): None starts at 0."""
        return self.rng if self.data.clip_start == "random" else None

    @staticmethod
    def _media(rec: dict) -> str:
        ext = next((e for e in MEDIA_EXTS if e in rec), None)
        if ext is None:
            raise DecodeError("no_media", f"members {sorted(k for k in rec if not k.startswith('__'))}")
        return ext

    @staticmethod
    def _latent_meta(info: dict, caption: str, latent_thw: list[int]) -> dict:
        src = info.get("latent") if isinstance(info.get("latent"), dict) else {}
        meta = {"caption": caption, "fps": float(src.get("fps", 0.0)), "frames": int(src.get("frames", 0)),
                "height": int(src.get("height", 0)), "width": int(src.get("width", 0)), "latent": latent_thw}
        return {**meta, **_attrs(info)}


def _attrs(info: dict) -> dict:
    """The record's attributes (synth's "attrs"), carried into the sample's meta when present."""
    return {"attrs": info["attrs"]} if "attrs" in info else {}


def record_to_state(rec: Mapping) -> dict:
    """A raw (still encoded) record as checkpointable state: its bytes as uint8 tensors."""
    out = {"key": str(rec.get("__key__", "")), "url": str(rec.get("__url__", "")), "members": {}}
    for k, v in rec.items():
        if not k.startswith("__"):
            out["members"][k] = torch.from_numpy(np.frombuffer(bytes(v), np.uint8).copy())
    return out


def record_from_state(s: Mapping) -> dict:
    """The inverse of `record_to_state`."""
    rec = {"__key__": s["key"], "__url__": s["url"]}
    rec.update({k: bytes(v.numpy().tobytes()) for k, v in s["members"].items()})
    return rec
