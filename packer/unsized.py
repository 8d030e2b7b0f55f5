"""UnsizedSample: a sample known by its native size, decoded once, at the size its row needs.

Legend: C channels, T/H/W frames/rows/columns, N tokens, D features.

A stream that reads native sizes from container headers hands StreamPacker an
UnsizedSample per clip: the native (T, H, W), the encoded bytes (`payload`), key and meta.
The packer sizes it with its row in mind (plan_sized's ranges, sized.py) and only when its
row closes asks the decode function for the video at the planned size:

    decode(sample, (T', H', W')) -> float video [C, T', H', W']

so what the packer buffers is encoded bytes, never decoded frames. Everything a pending
sample needs to be resumed is plain data (sizes, bytes as a uint8 tensor, numbers), so a
state_dict holds no callable and no pickle; the decode function is the stream's.

`SizingItem` is what the packer remembers per pending sample: the numbers that rebuild
its size range exactly (budget, cap, min_scale, drop rate), and its planned count in
kept tokens. `materialise` turns an item and its planned count into a PatchedSample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .batch import PatchedSample
from .budget import resize_video
from .drop import keep_tokens
from .errors import SampleError
from .grids import Band
from .patchify import patch_grid, patchify
from .prepare import check_video
from .sized import SizeRanges, size_ranges

__all__ = ["Decode", "SizingItem", "UnsizedSample", "kept_after_drop", "materialise", "tokens_before_drop"]


@dataclass
class UnsizedSample:
    """A sample before decoding: its native size (in patchify's units) and what decodes it.

    size:    native (T, H, W): frames, rows, columns (pixels, or latent cells)
    payload: what the decode function reads, typically the encoded bytes (kept in
             state_dict: bytes or a tensor); None if `load` needs nothing
    key, meta: as PatchedSample's; meta gains a "sizing" record when packed
    load:    this sample's own decode function (see Decode); None: the StreamPacker's.
             Not saved by state_dict: a resumed stream decodes with the StreamPacker's.
    """

    size: tuple[int, int, int]
    payload: bytes | Tensor | None = None
    key: str = ""
    meta: dict = field(default_factory=dict)
    load: Callable[[UnsizedSample, tuple[int, int, int]], Tensor] | None = None


# decode(sample, (T', H', W')) -> float video [C, T', H', W'] at exactly that size (a larger
# one is resized down; a smaller one is a "bad_size" skip). May raise SampleError to skip.
Decode = Callable[[UnsizedSample, tuple[int, int, int]], Tensor]


def kept_after_drop(n: int, rate: float) -> int:
    """Tokens drop_tokens keeps of n at this rate: n - floor(rate * n), at least 1."""
    return max(min(n, 1), n - math.floor(rate * n))


def tokens_before_drop(kept: int, rate: float) -> int:
    """The fewest grid tokens n with kept_after_drop(n, rate) >= kept."""
    n = max(kept, math.ceil(kept / (1.0 - rate)) - 1)
    while kept_after_drop(n, rate) < kept:
        n += 1
    while n > kept and kept_after_drop(n - 1, rate) >= kept:
        n -= 1
    return n


@dataclass
class SizingItem:
    """A pending unsized sample and the numbers that rebuild its size range (all plain data)."""

    sample: UnsizedSample
    budget: int  # tokens the plain fit aims at
    cap: int  # most tokens a target may hold
    min_scale: float  # each side >= min_scale x the fit's
    rate: float  # token-drop rate drawn for it (config.drop_rate)
    scale: float  # NaViT scale drawn for it (1.0 without resolution sampling)
    # with resolution sampling, kept tokens stay within [frac_lo, frac_hi] x the fit's, so
    # that the chosen scale s * sqrt(kept / fit) stays inside the requested range
    frac_lo: float = 0.0
    frac_hi: float = math.inf
    lo: int = 0  # range in kept tokens (after the drop rate)
    pref: int = 0
    hi: int = 0
    grids: list[int] = field(default_factory=list)  # fit, top, floor grids and gt_max, image: rebuilds the range

    def ranges(self, patch, max_frames, time_trim: int) -> SizeRanges:
        sizes = np.asarray([self.sample.size], dtype=np.int64)
        return size_ranges(sizes, patch=patch, max_tokens=self.cap, budgets=self.budget, max_frames=max_frames, min_scale=self.min_scale, time_trim=time_trim)

    def rebuild(self, patch) -> SizeRanges:
        """The range settle() saw, from the stored grids (no second fit search)."""
        g = np.asarray(self.grids, dtype=np.int64)
        fit, top, floor = g[0:3][None], g[3:6][None], g[6:9][None]
        _, h, w = self.sample.size
        one = lambda v: np.asarray([v], dtype=np.int64)  # noqa: E731
        return SizeRanges(tuple(patch), Band.of(one(h), one(w), patch[1], patch[2]), np.asarray([bool(g[10])]), one(g[9]), one(self.cap),
                          fit, top, floor, one(g[11]), fit.prod(axis=1), top.prod(axis=1))  # fmt: skip

    def settle(self, r: SizeRanges) -> None:
        """Set the range in kept tokens from the grid-token range; keep what rebuild() needs."""
        self.grids = [*r.fit[0].tolist(), *r.top[0].tolist(), *r.floor[0].tolist(), int(r.gt_max[0]), int(r.image[0]), int(r.lo[0])]
        pref = int(r.pref[0])
        lo = max(int(r.lo[0]), min(pref, math.ceil(self.frac_lo * pref - 1e-9)))
        hi = min(int(r.hi[0]), max(pref, math.floor(self.frac_hi * pref + 1e-9))) if math.isfinite(self.frac_hi) else int(r.hi[0])
        self.lo, self.pref, self.hi = (kept_after_drop(v, self.rate) for v in (lo, pref, hi))

    def state(self) -> dict:
        s = self.sample
        payload = torch.frombuffer(bytearray(s.payload), dtype=torch.uint8) if isinstance(s.payload, (bytes, bytearray)) else s.payload
        return {
            "size": list(s.size), "key": s.key, "meta": s.meta, "payload": payload,
            "payload_is_bytes": isinstance(s.payload, (bytes, bytearray)),
            "numbers": [self.budget, self.cap, self.min_scale, self.rate, self.scale, self.frac_lo, self.frac_hi if math.isfinite(self.frac_hi) else -1.0, self.lo, self.pref, self.hi],
            "grids": list(self.grids),
        }  # fmt: skip

    @classmethod
    def from_state(cls, d: dict) -> SizingItem:
        payload = d["payload"]
        if d["payload_is_bytes"]:
            payload = bytes(payload.numpy().tobytes())
        sample = UnsizedSample(tuple(int(v) for v in d["size"]), payload, d["key"], d["meta"])
        b, c, ms, rate, scale, f_lo, f_hi, lo, pref, hi = d["numbers"]
        return cls(sample, int(b), int(c), float(ms), float(rate), float(scale), float(f_lo), math.inf if f_hi < 0 else float(f_hi), int(lo), int(pref), int(hi), [int(v) for v in d["grids"]])


def materialise(item: SizingItem, kept: int, *, patch, decode: Decode, generator: torch.Generator) -> PatchedSample:
    """Decode an item at its planned size, patchify, keep exactly `kept` tokens (at random).

    The target is the smallest grid whose tokens, after the item's drop rate, still hold
    `kept`; the tokens beyond are dropped with the rate's, in one random draw.
    Raises SampleError ("bad_size" and check_video's reasons, or the decoder's own).
    """
    r = item.rebuild(patch)
    grid_tokens = r.pref if kept == item.pref else np.asarray([tokens_before_drop(kept, item.rate)])  # the fit, untouched
    grid, frames, _ = r.targets(grid_tokens)
    gt, gh, gw = (int(v) for v in grid[0])
    size = (int(frames[0]), gh * patch[1], gw * patch[2])
    video_CTHW = check_video(decode(item.sample, size))
    got = tuple(video_CTHW.shape[1:])
    if got != size:
        if not all(g >= s for g, s in zip(got, size)):
            raise SampleError("bad_size", f"decode returned (T, H, W) = {got} for a planned {size}")
        video_CTHW = resize_video(video_CTHW, size, patch=patch)
    tokens_ND, coords_N3 = patchify(video_CTHW, patch)
    tokens_ND, coords_N3 = keep_tokens(tokens_ND, coords_N3, kept, generator=generator)
    n = gt * gh * gw
    sizing = {
        "native": tuple(item.sample.size), "target": size, "tokens": kept, "fit_tokens": item.pref,
        "sizing_drop": kept_after_drop(n, item.rate) - kept, "scale": item.scale,
        "chosen_scale": item.scale * math.sqrt(kept / item.pref),
    }  # fmt: skip
    grid_ = patch_grid(*size, patch)
    return PatchedSample(tokens_ND, coords_N3, grid_, item.sample.key, {**item.sample.meta, "sizing": sizing})
