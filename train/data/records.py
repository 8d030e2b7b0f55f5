"""One webdataset record -> a decoded sample: caption pick, media decode, metadata.

A record is what `reader.read_shard` yields: {member extension: bytes, "__key__", "__url__"}.
`RecordDecoder.decode` checks its json and caption, picks one caption (seeded), and
decodes the media at native size (PyAV / Pillow), or loads a pre-encoded VAE latent
(`<key>.latent.safetensors`, written by latent_shards.py): the packer then patchifies
the latent exactly as it would pixels. Anything unusable raises DecodeError with a
short reason, which the streams count as a skip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .media_decode import (
    IMAGE_EXTS,
    LATENT_EXT,
    VIDEO_EXTS,
    DecodeError,
    decode_image,
    decode_latent,
    decode_video,
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
        d = self.data
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
        if LATENT_EXT in rec:  # a latent shard: the VAE already decoded, sized and encoded it
            latent = decode_latent(rec[LATENT_EXT])
            src = info.get("latent") if isinstance(info.get("latent"), dict) else {}
            meta = {"caption": caption, "fps": float(src.get("fps", 0.0)), "frames": int(src.get("frames", 0)),
                    "height": int(src.get("height", 0)), "width": int(src.get("width", 0)),
                    "latent": list(latent.shape[1:])}
            if "attrs" in info:
                meta["attrs"] = info["attrs"]
            return latent, meta
        ext = next((e for e in MEDIA_EXTS if e in rec), None)
        if ext is None:
            raise DecodeError("no_media", f"members {sorted(k for k in rec if not k.startswith('__'))}")
        if ext in VIDEO_EXTS:
            dec = decode_video(rec[ext], fps=d.fps, stride=d.stride, max_seconds=d.max_seconds,
                               max_frames=d.max_frames, max_pixels=d.max_pixels,
                               max_source_frames=d.max_source_frames,
                               rng=self.rng if d.clip_start == "random" else None)
        else:
            dec = decode_image(rec[ext], max_pixels=d.max_pixels)
        t, h, w = dec.frames_THWC.shape[:3]
        meta = {"caption": caption, "fps": dec.fps, "frames": t, "height": h, "width": w}
        if "attrs" in info:
            meta["attrs"] = info["attrs"]
        return to_video_CTHW(dec.frames_THWC), meta


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
