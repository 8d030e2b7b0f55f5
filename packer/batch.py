"""The packed-batch contract: many variable-size samples in one static [B, L] layout.

Legend: B rows (sequences), L tokens per row, D token features, S samples in the
batch, G attention segments (samples + padding runs), N tokens of one sample.

A row holds whole samples back to back from offset 0, then one run of padding.
Samples are numbered in row-major order of appearance, so the valid tokens of the
flattened batch, read in order, are exactly the samples concatenated in order:
that makes `split` a single boolean gather plus a view split.

    row 0: [ s0 s0 s0 s1 s1 . . ]      segment_ids: 0 0 0 1 1 -1 -1
    row 1: [ s2 s2 s2 s2 s2 s2 . ]                  2 2 2 2 2 2 -1
    cu_seqlens (over B*L = 14):  0  3  5  7  13  14
                                  s0  s1 pad  s2  pad

Each padding run is its own attention segment, so padding never attends to real
tokens and real tokens never attend to padding.

A sample may mark some tokens as given (a conditioning frame: clean, t = 0) and the rest
as generated. `given` is then a [B, L] bool beside `segment_ids`, False on padding, and
`condition_index` numbers each token's (sample, given) pair for a [2S, ...] table:

    segment_ids:      0 0 0 1 1 -1 -1        given: T F F F F F F
    condition_index:  2 0 0 1 1 -1 -1        (S = 2: rows 0..1 generated, 2..3 given)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

__all__ = ["PatchedSample", "PackedBatch", "pack", "per_token", "segment_mean", "INT32_MAX"]

INT32_MAX = 2**31 - 1  # coords and cu_seqlens are int32


def per_token(values_S: Tensor, segment_ids_N: Tensor, pad_value: float = 0.0) -> Tensor:
    """Gather per-sample rows [S, ...] to tokens [N, ...]; padding (segment -1) gets pad_value.

    The pad row is appended last, so index -1 picks it: one gather, no mask.
    Cost: an [N, ...] copy (for a DiT's adaLN that is 6*D per token per block).
    """
    pad = values_S.new_full((1, *values_S.shape[1:]), pad_value)
    return torch.cat([values_S, pad])[segment_ids_N.long()]


def segment_mean(values_U: Tensor, lengths_S: Tensor) -> Tensor:
    """Mean of each run of a varlen layout: [U, ...] runs of lengths_S back to back -> [S, ...].

    The layout of a batch's valid tokens (`num_tokens`) and of captions (`text_lengths`).
    An empty run gives zeros. Cost: one index_add over U rows.
    """
    lengths_S = lengths_S.to(values_U.device, torch.int64)
    owner_U = torch.repeat_interleave(torch.arange(lengths_S.numel(), device=values_U.device), lengths_S)
    sums = values_U.new_zeros(lengths_S.numel(), *values_U.shape[1:]).index_add_(0, owner_U, values_U)
    count = lengths_S.clamp(min=1).to(values_U.dtype).reshape(-1, *([1] * (values_U.ndim - 1)))
    return sums / count


@dataclass
class PatchedSample:
    """One sample after patchify (and optional token dropping).

    tokens: [N, D] float patch vectors; coords: [N, 3] int (t, h, w) grid indices.
    grid: the full (T', H', W') patch grid before any token was dropped.
    given: [N] bool, True on tokens given as a condition (clean, t = 0); None: all generated.
    """

    tokens: Tensor
    coords: Tensor
    grid: tuple[int, int, int]
    key: str = ""
    meta: dict = field(default_factory=dict)
    given: Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class PackedBatch:
    """S samples packed into B fixed-length rows of L tokens.

    Fields (shapes static in B and L):
        tokens       [B, L, D] float, padding zeroed
        coords       [B, L, 3] int32 (t, h, w); padding coords are 0
        segment_ids  [B, L] int32: sample index within the batch, -1 for padding
        cu_seqlens   [G+1] int32 over the flattened B*L tokens; one segment per
                     sample and one per padding run; ends at B*L
        max_seqlen   python int, the longest segment (host side: no sync in forward)
        segment_sample [G] int64: the sample of each attention segment, -1 for padding
        grid         [S, 3] int64: full (T', H', W') patch grid of each sample
        num_tokens   [S] int64: tokens kept for each sample
        row, offset  [S] int64: where each sample starts
        keys         S source keys (shard/key) for traceability
        meta         S per-sample dicts carried through untouched (captions, ...)
        given        [B, L] bool or None: tokens given as a condition (clean, t = 0),
                     False on padding; None when no sample has any
    """

    tokens: Tensor
    coords: Tensor
    segment_ids: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    segment_sample: Tensor
    grid: Tensor
    num_tokens: Tensor
    row: Tensor
    offset: Tensor
    keys: list[str]
    meta: list[dict]
    given: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.tokens.shape[0]), int(self.tokens.shape[1])

    @property
    def valid(self) -> Tensor:
        """[B, L] bool, True on real tokens."""
        return self.segment_ids >= 0

    @property
    def fill(self) -> float:
        """Fraction of the B*L slots holding real tokens."""
        b, l = self.shape
        return float(self.num_tokens.sum()) / max(b * l, 1)

    def split(self, x: Tensor) -> list[Tensor]:
        """[B, L, ...] -> S tensors [N_s, ...]: the exact inverse of packing."""
        b, l = self.shape
        if tuple(x.shape[:2]) != (b, l):
            raise ValueError(f"split expects [B, L, ...] = [{b}, {l}, ...], got {tuple(x.shape)}")
        flat = x.reshape(b * l, *x.shape[2:])[self.valid.reshape(-1).to(x.device)]
        return list(flat.split(self.num_tokens.tolist()))

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        """S tensors [N_s, ...] -> [B, L, ...] in this batch's layout, padding zeroed: the inverse of `split`."""
        b, l = self.shape
        if len(parts) != self.num_samples:
            raise ValueError(f"merge needs one tensor per sample ({self.num_samples}), got {len(parts)}")
        lengths = [int(p.shape[0]) for p in parts]
        if lengths != self.num_tokens.tolist():
            raise ValueError(f"merge: sample lengths {lengths[:8]} != the batch's num_tokens {self.num_tokens.tolist()[:8]}")
        flat = torch.cat(list(parts))
        out = flat.new_zeros(b * l, *flat.shape[1:])
        out[self.valid.reshape(-1).to(flat.device)] = flat
        return out.reshape(b, l, *flat.shape[1:])

    def with_tokens(self, tokens: Tensor) -> PackedBatch:
        """The same layout holding other tokens [B, L, D'] (noised, predicted, ...); D' may differ."""
        if tuple(tokens.shape[:2]) != self.shape or tokens.ndim != 3:
            raise ValueError(f"with_tokens expects [B, L, D] = [{self.shape[0]}, {self.shape[1]}, D], got {tuple(tokens.shape)}")
        return replace(self, tokens=tokens)

    def per_token(self, values_S: Tensor, pad_value: float = 0.0) -> Tensor:
        """Per-sample values [S, ...] -> [B*L, ...] on the flattened tokens; padding gets pad_value."""
        return per_token(values_S, self.segment_ids.reshape(-1), pad_value)

    def with_given(self, given: Tensor | None) -> PackedBatch:
        """The same batch with other given tokens: [B, L] bool (False on padding), or None."""
        if given is not None:
            if tuple(given.shape) != self.shape or given.dtype != torch.bool:
                raise ValueError(f"given must be bool [B, L] = [{self.shape[0]}, {self.shape[1]}], "
                                 f"got {given.dtype} {tuple(given.shape)}")
            if bool((given & ~self.valid.to(given.device)).any()):  # host sync: once per call
                raise ValueError("given marks padding tokens; it must be False wherever segment_ids is -1")
        return replace(self, given=given)

    def condition_index(self) -> Tensor:
        """[B*L] int64: each token's row in a [2S, ...] per-(sample, given) table (s, or S + s
        when given), -1 on padding; without `given`, the sample index. Feed it to `per_token`."""
        seg = self.segment_ids.reshape(-1).long()
        if self.given is None:
            return seg
        return seg + self.num_samples * self.given.reshape(-1).to(seg.device).long()  # padding: -1 + 0

    def segment_mean(self, x: Tensor) -> Tensor:
        """[B, L, ...] -> [S, ...]: the mean of each sample's tokens (padding never counts)."""
        b, l = self.shape
        if tuple(x.shape[:2]) != (b, l):
            raise ValueError(f"segment_mean expects [B, L, ...] = [{b}, {l}, ...], got {tuple(x.shape)}")
        flat = x.reshape(b * l, *x.shape[2:])[self.valid.reshape(-1).to(x.device)]
        return segment_mean(flat, self.num_tokens)

    def cross_cu_seqlens(self, kv_lengths: Sequence[int] | Tensor) -> tuple[Tensor, int]:
        """cu_seqlens for keys/values laid out one segment per sample (e.g. captions).

        Aligned with `cu_seqlens`: sample segments get kv_lengths[s] keys, padding
        segments get 0 keys (their queries then read nothing). Returns (cu, max).
        """
        kv_S = torch.as_tensor(kv_lengths, dtype=torch.int64).cpu()
        if kv_S.shape != (self.num_samples,):
            raise ValueError(f"kv_lengths must have one entry per sample ({self.num_samples}), got shape {tuple(kv_S.shape)}")
        if (kv_S < 0).any():
            raise ValueError(f"kv_lengths must be >= 0, got {kv_S.tolist()}")
        seg = self.segment_sample
        per_seg = torch.where(seg >= 0, kv_S[seg.clamp(min=0)], torch.zeros_like(seg))
        cu = torch.zeros(per_seg.numel() + 1, dtype=torch.int32)
        cu[1:] = per_seg.cumsum(0)
        return cu.to(self.cu_seqlens.device), int(per_seg.max()) if per_seg.numel() else 0

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> PackedBatch:
        """Move the tensors; host-side bookkeeping (grid, num_tokens, ...) stays on CPU."""
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            tokens=mv(self.tokens),
            coords=mv(self.coords),
            segment_ids=mv(self.segment_ids),
            cu_seqlens=mv(self.cu_seqlens),
            given=None if self.given is None else mv(self.given),
        )


def _check_plan(plan: Sequence[Sequence[int]], lengths: list[int], max_len: int) -> None:
    seen = [0] * len(lengths)
    for r, bin_ in enumerate(plan):
        for i in bin_:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(lengths):
                raise ValueError(f"plan row {r} names sample {i}, but there are {len(lengths)} samples")
            seen[i] += 1
        used = sum(lengths[i] for i in bin_)
        if used > max_len:
            raise ValueError(f"plan row {r} holds {used} tokens > max_len={max_len}")
    missing = [i for i, c in enumerate(seen) if c == 0]
    twice = [i for i, c in enumerate(seen) if c > 1]
    if missing or twice:
        raise ValueError(f"plan must place each sample exactly once: missing {missing[:10]}, repeated {twice[:10]}")


def _check_samples(samples: Sequence[PatchedSample]) -> tuple[int, torch.dtype]:
    if not samples:
        raise ValueError("pack needs at least one sample")
    d, dtype = int(samples[0].tokens.shape[-1]), samples[0].tokens.dtype
    for i, s in enumerate(samples):
        if s.tokens.ndim != 2 or s.tokens.shape[1] != d:
            raise ValueError(f"sample {i} ({s.key!r}): tokens must be [N, {d}], got {tuple(s.tokens.shape)}")
        if s.tokens.dtype != dtype:
            raise ValueError(f"sample {i} ({s.key!r}): dtype {s.tokens.dtype} != {dtype} of sample 0")
        if s.coords.shape != (s.tokens.shape[0], 3):
            raise ValueError(f"sample {i} ({s.key!r}): coords must be [{s.tokens.shape[0]}, 3], got {tuple(s.coords.shape)}")
        if s.tokens.shape[0] == 0:
            raise ValueError(f"sample {i} ({s.key!r}) has no tokens")
        if s.given is not None and (s.given.shape != (s.tokens.shape[0],) or s.given.dtype != torch.bool):
            raise ValueError(f"sample {i} ({s.key!r}): given must be bool [{s.tokens.shape[0]}], "
                             f"got {s.given.dtype} {tuple(s.given.shape)}")
        # coords become int32: a float would be truncated and a value >= 2**31 would wrap (one scan of N*3 ints)
        if s.coords.dtype.is_floating_point or s.coords.dtype == torch.bool or s.coords.is_complex():
            raise ValueError(f"sample {i} ({s.key!r}): coords must be integers, got {s.coords.dtype}")
        lo, hi = int(s.coords.min()), int(s.coords.max())
        if lo < 0 or hi > INT32_MAX:
            raise ValueError(f"sample {i} ({s.key!r}): coords must be in [0, 2**31 - 1], got [{lo}, {hi}]")
    return d, dtype


def pack(
    samples: Sequence[PatchedSample],
    plan: Sequence[Sequence[int]],
    max_len: int,
    *,
    rows: int | None = None,
    out: PackedBatch | Sequence[Tensor] | None = None,
) -> PackedBatch:
    """Materialise `plan` (rows of sample indices, e.g. from `plan_packs`) as a PackedBatch.

    rows: pad the batch to exactly this many rows (static B for compiled models);
    extra rows are all padding. Defaults to len(plan).
    out: write into these buffers instead of fresh ones: an earlier PackedBatch (its tokens,
    coords and segment_ids are overwritten, so it must no longer be in use) or a tuple
    (tokens [B, L, D] of the samples' dtype, coords [B, L, 3] int32, segment_ids [B, L]
    int32), e.g. made with pin_memory=True for asynchronous host-to-device copies. The
    returned batch holds these very tensors. A wrong shape, dtype or layout is a ValueError.
    Cost: one copy of every sample's tokens and coords; only padding is zeroed. A fresh
    output pays a page fault per 4 KiB page on first touch (glibc maps buffers over 32 MiB
    anew on every call), which `out` avoids.
    """
    lengths = [len(s) for s in samples]
    for name, v in (("max_len", max_len), ("rows", rows)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    _check_plan(plan, lengths, max_len)
    d, dtype = _check_samples(samples)
    b = len(plan) if rows is None else rows
    if b < len(plan):
        raise ValueError(f"plan has {len(plan)} rows > rows={rows}")
    l = max_len

    order = [i for bin_ in plan for i in bin_]  # batch sample s is input sample order[s]
    if out is None:
        tokens_BLD = torch.empty(b, l, d, dtype=dtype)
        coords_BL3 = torch.empty(b, l, 3, dtype=torch.int32)
        segment_ids_BL = torch.empty(b, l, dtype=torch.int32)
    else:
        bufs = (out.tokens, out.coords, out.segment_ids) if isinstance(out, PackedBatch) else tuple(out)
        if len(bufs) != 3 or not all(isinstance(t, Tensor) for t in bufs):
            raise ValueError(f"out must be a PackedBatch or 3 tensors (tokens, coords, segment_ids), got {type(out).__name__} of {len(bufs)}")
        for name, t, shape, dt in zip(("tokens", "coords", "segment_ids"), bufs, ((b, l, d), (b, l, 3), (b, l)), (dtype, torch.int32, torch.int32)):
            if tuple(t.shape) != shape or t.dtype != dt:
                raise ValueError(f"out {name} is {tuple(t.shape)} {t.dtype}; this pack needs {shape} {dt}")
            if not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"out {name} must be a contiguous CPU tensor (pinned or not), got stride {t.stride()} on {t.device}")
        tokens_BLD, coords_BL3, segment_ids_BL = bufs
    tok_flat, crd_flat, seg_flat = tokens_BLD.view(b * l, d), coords_BL3.view(b * l, 3), segment_ids_BL.view(b * l)
    conditioned = any(samples[i].given is not None for i in order)
    given_BL = torch.zeros(b, l, dtype=torch.bool) if conditioned else None

    seg_lengths: list[int] = []
    segment_sample: list[int] = []
    row_S, offset_S = [], []
    s = 0
    for r in range(b):  # one copy call per row, not per sample: its samples lie back to back
        start = r * l
        members = plan[r] if r < len(plan) else ()
        used = 0
        for i in members:
            if given_BL is not None and samples[i].given is not None:
                given_BL.view(b * l)[start + used : start + used + lengths[i]].copy_(samples[i].given)
            row_S.append(r)
            offset_S.append(used)
            seg_lengths.append(lengths[i])
            segment_sample.append(s)
            used += lengths[i]
            s += 1
        if members:
            torch.cat([samples[i].tokens for i in members], out=tok_flat[start : start + used])
            crd = [samples[i].coords for i in members]
            torch.cat([c if c.dtype == torch.int32 else c.to(torch.int32) for c in crd], out=crd_flat[start : start + used])
        if used < l:
            tok_flat[start + used : start + l].zero_()
            crd_flat[start + used : start + l].zero_()
            seg_lengths.append(l - used)
            segment_sample.append(-1)
    seg_G = np.array(segment_sample, dtype=np.int64)
    seg_flat.numpy()[:] = np.repeat(seg_G, seg_lengths)  # 3x faster than repeat_interleave
    cu = np.zeros(len(seg_lengths) + 1, dtype=np.int32)
    np.cumsum(seg_lengths, out=cu[1:])
    # host-side metadata built in numpy and wrapped without copies: torch.tensor(list) costs
    # tens of microseconds a call, a visible share of packing a few MiB
    per_S = np.array([row_S, offset_S, [lengths[i] for i in order]], dtype=np.int64).reshape(3, -1)
    return PackedBatch(
        tokens=tokens_BLD,
        coords=coords_BL3,
        segment_ids=segment_ids_BL,
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=max(seg_lengths),
        segment_sample=torch.from_numpy(seg_G),
        grid=torch.from_numpy(np.array([samples[i].grid for i in order], dtype=np.int64).reshape(-1, 3)),
        num_tokens=torch.from_numpy(per_S[2]),
        row=torch.from_numpy(per_S[0]),
        offset=torch.from_numpy(per_S[1]),
        keys=[samples[i].key for i in order],
        meta=[samples[i].meta for i in order],
        given=given_BL,
    )
