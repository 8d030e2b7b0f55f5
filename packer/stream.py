"""StreamPacker: online packing of a sample stream into fixed [rows, max_len] PackedBatches.

Legend: N tokens of a sample, D features, B rows, L = max_len.

Two kinds of input, mixed freely in one stream:
  * PatchedSample: already resized and patchified; placed whole (or shrunk by
    fill_to_exact).
  * UnsizedSample (unsized.py): native (T, H, W) + encoded bytes, not yet decoded. With
    sizing="plan" (the default) its size is chosen with its row in mind: plan_sized's
    range (sized.py) goes to best fit (bins.BestFit.add_range), in windows of `buffer`
    samples placed largest first, exactly as plan_sized(..., buffer=k); with sizing="fit" it takes
    the plain budget fit and `policy` places it whole. Only when its row closes is it
    decoded, once, at the planned size (`decode(sample, (T', H', W'))`), patchified, and
    token-dropped to exactly its planned count (config.drop_rate plus the few tokens
    sizing drops). The buffer therefore holds encoded samples, never decoded frames.
    With resolution_sampling each sample draws a scale s ~ U(lo, hi) and the planner may
    move it by min_scale either way inside [lo, hi] (budget.sampled_range), so that rows
    fill while the chosen scales stay distributed like the drawn ones.

Flow per incoming PatchedSample: validate (bad ones are counted by reason, never
raised, except an oversize sample under oversize="error"/"downscale") -> oversize policy
-> the bin engine of `config.policy` with at most `config.buffer` open rows (bins.py)
-> closed rows queue up -> every `rows` closed rows become one PackedBatch.

Oversize (N > max_len):
  * "error": raise SampleError("oversize").
  * "drop": skip, counted in stats.dropped_by_reason["oversize"].
  * "split_time": cut along the t coords at frame boundaries into the fewest chunks of
    <= max_len tokens (greedy); each chunk is a sample with t re-based to 0, grid
    (frames in chunk, H', W') and key f"{key}@t{t0}". A single frame > max_len is
    dropped as "oversize".
  * "downscale": resizing needs raw pixels, so prepare_sample does it (fit_budget to
    <= max_len); a sample that still arrives oversize is an upstream bug: raise.

fill_to_exact: the engine assigns a shrunk token count (bins.py); it is applied when the
row is emitted by dropping exactly that many extra tokens at random (drop.keep_tokens),
which keeps order, coords and aspect.

End of stream: `pack(samples)` keeps the partly-filled rows for the next call (so a
stream can be fed in pieces and checkpointed); `flush()` (or pack(..., flush=True))
closes every open row and emits the rest, the last batch padded with empty rows to
exactly `rows` x `max_len`.

Determinism and resume: everything depends on the input order, the config and `seed`
only. state_dict() holds the buffered samples (open and queued rows, by reference, no
copy), the engine state, the RNG state and the stats; after load_state_dict() the same
remaining upstream (upstream[stats.samples_in:]) yields bitwise-identical next batches.
Size cost: the buffered tokens, at most about (buffer + rows) * max_len * D * itemsize
bytes (buffer=64, L=4096, D=64 fp32: ~70 MB), plus O(buffer) ints. Unsized samples cost
their payload (encoded bytes) until their batch is emitted; state_dict stores them as
plain data (size, key, meta, payload as a uint8 tensor, a few numbers), never a callable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from .batch import PackedBatch, PatchedSample, pack
from .bins import BestFit, make_engine
from .budget import sampled_range
from .config import PackerConfig
from .drop import keep_tokens, resolve_drop_rate
from .errors import SampleError
from .unsized import Decode, SizingItem, UnsizedSample, materialise

__all__ = ["StreamPacker", "PackerStats", "split_time"]


@dataclass
class PackerStats:
    """Counters of a StreamPacker; also readable as stats["fill"]."""

    samples_in: int = 0  # upstream items consumed (resume from upstream[samples_in:])
    samples_packed: int = 0  # samples emitted in batches (split chunks count one each)
    tokens_packed: int = 0  # real tokens emitted
    slots: int = 0  # B * L of every emitted batch
    batches: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    shrunk_samples: int = 0  # fill-to-exact adjustments
    shrunk_tokens: int = 0  # tokens they dropped
    split_samples: int = 0  # oversize samples cut by split_time ...
    split_chunks: int = 0  # ... into this many chunks
    sized_samples: int = 0  # unsized samples packed
    fit_tokens: int = 0  # their plain-fit tokens (after the drop rate): what "fit" sizing keeps
    resized_samples: int = 0  # of those, kept at a count other than their fit's
    tokens_given_up: int = 0  # fit tokens not kept (samples sized below their fit)
    tokens_gained: int = 0  # tokens kept beyond the fit (resolution_sampling lets samples grow)
    sizing_drop_tokens: int = 0  # tokens dropped at random to hit a planned count exactly

    @property
    def fill(self) -> float:
        return self.tokens_packed / self.slots if self.slots else 0.0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def given_up(self) -> float:
        """Share of the sized samples' plain-fit tokens given up to sizing."""
        return self.tokens_given_up / self.fit_tokens if self.fit_tokens else 0.0

    def __getitem__(self, name: str):
        return getattr(self, name)

    def as_dict(self) -> dict:
        return {**asdict(self), "fill": self.fill, "dropped": self.dropped, "given_up": self.given_up}

    def _drop(self, reason: str) -> None:
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + 1


def split_time(sample: PatchedSample, max_len: int) -> list[PatchedSample] | None:
    """Cut a sample at frame boundaries into the fewest chunks of <= max_len tokens,
    t re-based per chunk; None if one frame alone exceeds max_len. Tokens must be in
    non-decreasing t order (patchify + drop keep it).
    """
    t_N = sample.coords[:, 0]
    _, counts = torch.unique_consecutive(t_N, return_counts=True)
    counts = counts.tolist()
    if max(counts) > max_len:
        return None
    cuts, used = [0], 0
    for c in counts:  # per frame, not per token
        if used + c > max_len:
            cuts.append(cuts[-1] + used)
            used = 0
        used += c
    cuts.append(cuts[-1] + used)
    chunks = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        coords_K3 = sample.coords[a:b].clone()
        t0, t1 = int(coords_K3[0, 0]), int(coords_K3[-1, 0])
        coords_K3[:, 0] -= t0
        grid = (t1 - t0 + 1, sample.grid[1], sample.grid[2])
        chunks.append(PatchedSample(sample.tokens[a:b], coords_K3, grid, f"{sample.key}@t{t0}", sample.meta))
    return chunks


class StreamPacker:
    """Online packer: `pack(iterable of samples) -> Iterator[PackedBatch]`, each batch exactly
    config.rows x config.max_len. See the module docstring for policies.

    Feeding it unsized samples (a data stream that reads native sizes from container
    headers before decoding anything):

        def decode(sample, size):            # size = (T', H', W') planned, in patchify's units
            return decode_at(sample.payload, size)   # float [C, T', H', W'], decoded once
        packer = StreamPacker(PackerConfig(max_len=4096, rows=2), decode=decode)
        for batch in packer.pack(UnsizedSample((t, h, w), payload=mp4_bytes, key=k, meta=m)
                                 for t, h, w, mp4_bytes, k, m in records):
            ...   # batch.meta[i]["sizing"]: native, target, tokens, fit_tokens, sizing_drop,
                  # scale (drawn) and chosen_scale (with resolution_sampling; 1.0 without)

    `decode` may return a larger video (it is then resized down) and may raise
    SampleError(reason) to skip a sample: the row it was planned into keeps that gap.
    Native sizes are in the units patchify sees: pixels, or latent frames/rows/columns when
    a VAE encodes first (then decode returns the latent at that size). A sample may carry
    its own `load` instead; a resumed packer decodes its restored samples with `decode`,
    so pass it whenever unsized samples can sit in a checkpoint. Stats count the tokens
    sizing gave up (stats.tokens_given_up of stats.fit_tokens), and meta["sizing"] per sample.
    Unsized samples are always sized to fit a row (budget capped at max_len).
    """

    def __init__(self, config: PackerConfig, *, seed: int = 0, decode: Decode | None = None) -> None:
        self.config = config
        self.seed = seed
        self.decode = decode
        self.stats = PackerStats()
        self._engine = make_engine(
            config.policy,
            config.max_len,
            open_bins=config.buffer,
            max_shrink=config.max_shrink if config.fill_to_exact else 0.0,
            min_tokens=config.min_tokens,
        )
        self._generator = torch.Generator().manual_seed(seed)
        self._held: dict[int, PatchedSample | SizingItem] = {}  # buffered samples by stream id
        self._window: list[int] = []  # unsized samples waiting to be placed (sizing="plan"), <= buffer
        self._ready: deque[list[int]] = deque()  # closed rows waiting for a full batch
        self._next_id = 0
        self._feature: tuple[int, torch.dtype] | None = None  # (D, dtype) of the stream

    # ---- feeding -------------------------------------------------------------------
    def pack(self, samples: Iterable[PatchedSample], *, flush: bool = False) -> Iterator[PackedBatch]:
        """Consume `samples`, yielding each batch as soon as `rows` rows have closed."""
        yield from self._emit()
        for sample in samples:
            self.push(sample)
            yield from self._emit()
        if flush:
            yield from self.flush()

    def push(self, sample: PatchedSample | UnsizedSample) -> None:
        """Take one sample; closed rows queue up until `rows` of them make a batch."""
        self.stats.samples_in += 1
        if isinstance(sample, UnsizedSample):
            self._push_unsized(sample)
            return
        reason = self._invalid(sample)
        if reason is not None:
            self.stats._drop(reason)
            return
        n, max_len = len(sample), self.config.max_len
        if n <= max_len:
            self._place(sample)
            return
        policy = self.config.oversize
        if policy in ("error", "downscale"):
            hint = " (prepare_sample with oversize='downscale' should have fitted it)" if policy == "downscale" else ""
            raise SampleError("oversize", f"sample {sample.key!r}: {n} tokens > max_len={max_len}{hint}")
        chunks = split_time(sample, max_len) if policy == "split_time" else None
        if chunks is None:
            self.stats._drop("oversize")
            return
        self.stats.split_samples += 1
        self.stats.split_chunks += len(chunks)
        for chunk in chunks:
            self._place(chunk)

    def flush(self) -> list[PackedBatch]:
        """Close all open rows and return the remaining batches (the last one padded)."""
        self._place_window()
        self._ready.extend(self._engine.flush())
        out = list(self._emit())
        if self._ready:
            batch = self._materialise([self._ready.popleft() for _ in range(len(self._ready))])
            out += [batch] if batch is not None else []
        return out

    @property
    def pending(self) -> int:
        """Samples held (in open or queued rows)."""
        return len(self._held)

    # ---- internals -----------------------------------------------------------------
    def _push_unsized(self, sample: UnsizedSample) -> None:
        cfg = self.config
        size = sample.size
        if not (isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
            self.stats._drop("bad_size")
            return
        if min(size) == 0:
            self.stats._drop("empty")
            return
        plan = cfg.sizing == "plan"
        if plan and not isinstance(self._engine, BestFit):
            raise ValueError(f"sizing='plan' plans with best fit: use policy='bfd' (got {cfg.policy!r}), or sizing='fit' to place plain fits with {cfg.policy!r}")
        budget = min(cfg.token_budget, cfg.max_len)  # a planned sample always fits a row
        item = SizingItem(sample, budget, budget, cfg.min_scale if plan else 1.0, 0.0, 1.0)
        if cfg.resolution_sampling is not None:
            lo, hi = cfg.resolution_sampling
            item.scale = lo + (hi - lo) * float(torch.rand((), generator=self._generator))
            if plan:
                item.budget, item.cap, item.min_scale = sampled_range(item.scale, (lo, hi), budget, cfg.min_scale)
                item.frac_lo, item.frac_hi = item.min_scale**2, 1.0 / max(cfg.min_scale, item.scale / hi) ** 2
            else:
                item.budget = item.cap = max(1, int(item.scale**2 * budget))
        try:
            r = item.ranges(cfg.patch, cfg.max_frames, cfg.time_trim)
            item.rate = resolve_drop_rate(cfg.drop_rate, tuple(int(v) for v in r.fit[0]), generator=self._generator)
        except SampleError as e:
            self.stats._drop(e.reason)
            return
        item.settle(r)
        sid = self._next_id
        self._next_id += 1
        self._held[sid] = item
        if not plan:
            self._engine.add(sid, item.pref)
            self._collect()
            return
        self._window.append(sid)
        if len(self._window) >= cfg.buffer:
            self._place_window()

    def _place_window(self) -> None:
        """Place the waiting unsized samples, largest fit first (best fit decreasing over the window)."""
        order = sorted(self._window, key=lambda sid: -self._held[sid].pref)  # stable: ties by arrival
        self._window = []
        for sid in order:
            item = self._held[sid]
            self._engine.add_range(sid, item.lo, item.pref, item.hi)
        self._collect()

    def _collect(self) -> None:
        if self._engine.closed:
            self._ready.extend(self._engine.closed)
            self._engine.closed.clear()

    def _sized(self, sid: int, item: SizingItem) -> PatchedSample | None:
        """Decode, patchify and drop one planned sample; None (counted) if it is skipped."""
        kept = self._engine.shrunk.pop(sid, item.pref)
        decode = item.sample.load or self.decode
        if decode is None:
            raise ValueError(f"unsized sample {item.sample.key!r} has no load function and StreamPacker has no decode=")
        cfg = self.config
        try:
            s = materialise(item, kept, patch=cfg.patch, decode=decode, generator=self._generator)
        except SampleError as e:
            self.stats._drop(e.reason)
            return None
        reason = self._invalid(s)
        if reason is not None:
            self.stats._drop(reason)
            return None
        st = self.stats
        st.sized_samples += 1
        st.fit_tokens += item.pref
        st.resized_samples += kept != item.pref
        st.tokens_given_up += max(0, item.pref - kept)
        st.tokens_gained += max(0, kept - item.pref)
        st.sizing_drop_tokens += s.meta["sizing"]["sizing_drop"]
        return s

    def _invalid(self, s: object) -> str | None:
        if not isinstance(s, PatchedSample) or not isinstance(s.tokens, torch.Tensor) or not isinstance(s.coords, torch.Tensor):
            return "bad_type"
        if s.tokens.ndim != 2:
            return "bad_rank"
        if not s.tokens.is_floating_point():
            return "bad_dtype"
        if s.tokens.shape[0] == 0:
            return "empty"
        if tuple(s.coords.shape) != (s.tokens.shape[0], 3):
            return "bad_coords"
        if self._feature is not None:
            d, dtype = self._feature
            if s.tokens.shape[1] != d:
                return "bad_dim"
            if s.tokens.dtype != dtype:
                return "bad_dtype"
        if self.config.check_finite and not torch.isfinite(s.tokens).all():
            return "nonfinite"
        if self._feature is None:
            self._feature = (int(s.tokens.shape[1]), s.tokens.dtype)
        return None

    def _place(self, sample: PatchedSample) -> None:
        sid = self._next_id
        self._next_id += 1
        self._held[sid] = sample
        self._engine.add(sid, len(sample))
        self._collect()

    def _emit(self) -> Iterator[PackedBatch]:
        rows = self.config.rows
        while len(self._ready) >= rows:
            batch = self._materialise([self._ready.popleft() for _ in range(rows)])
            if batch is not None:
                yield batch

    def _materialise(self, bins: list[list[int]]) -> PackedBatch | None:
        samples, plan = [], []
        for bin_ in bins:
            row = []
            for sid in bin_:
                s = self._held.pop(sid)
                if isinstance(s, SizingItem):
                    s = self._sized(sid, s)
                    if s is not None:
                        row.append(len(samples))
                        samples.append(s)
                    continue
                target = self._engine.shrunk.pop(sid, None)
                if target is not None and target < len(s):
                    self.stats.shrunk_samples += 1
                    self.stats.shrunk_tokens += len(s) - target
                    tokens, coords = keep_tokens(s.tokens, s.coords, target, generator=self._generator)
                    s = PatchedSample(tokens, coords, s.grid, s.key, s.meta)
                row.append(len(samples))
                samples.append(s)
            plan.append(row)
        if not samples:  # every sample of these rows was skipped at decode time: no batch
            return None
        batch = pack(samples, plan, self.config.max_len, rows=self.config.rows)
        st = self.stats
        st.batches += 1
        st.samples_packed += len(samples)
        st.tokens_packed += int(batch.num_tokens.sum())
        st.slots += self.config.rows * self.config.max_len
        return batch

    # ---- checkpointing -------------------------------------------------------------
    # a resume must rebuild the same rows; and, while unsized samples are held, the same sizes
    _CHECKED = ("max_len", "rows", "policy", "buffer", "fill_to_exact", "max_shrink", "min_tokens", "oversize")
    _CHECKED_SIZED = ("patch", "max_frames", "max_tokens_per_sample", "sizing", "min_scale", "time_trim", "resolution_sampling")

    def state_dict(self) -> dict:
        """Everything needed to resume bitwise; tensors are referenced, not copied."""
        held = {}
        for sid, s in self._held.items():
            if isinstance(s, SizingItem):
                held[sid] = {"unsized": s.state()}
            else:
                held[sid] = {"tokens": s.tokens, "coords": s.coords, "grid": tuple(s.grid), "key": s.key, "meta": s.meta}
        return {
            "version": 1,
            "config": {k: getattr(self.config, k) for k in self._CHECKED + self._CHECKED_SIZED},
            "seed": self.seed,
            "generator": self._generator.get_state(),
            "engine": self._engine.state_dict(),
            "held": held,
            "ready": [list(b) for b in self._ready],
            "window": list(self._window),
            "next_id": self._next_id,
            "feature": None if self._feature is None else (self._feature[0], str(self._feature[1]).removeprefix("torch.")),
            "stats": asdict(self.stats),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict; unsized samples in it decode with this packer's `decode`."""
        unsized = sum("unsized" in d for d in sd["held"].values())
        norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (JSON turns tuples into lists)
        keys = self._CHECKED + (self._CHECKED_SIZED if unsized else ())
        mismatch = {k: (sd["config"][k], getattr(self.config, k)) for k in keys if k in sd["config"] and norm(getattr(self.config, k)) != norm(sd["config"][k])}
        if mismatch:
            raise ValueError(f"state_dict was saved with a different config (saved, current): {mismatch}")
        if unsized and self.decode is None:
            raise ValueError(f"state_dict holds {unsized} unsized samples: construct the StreamPacker with decode= to resume it")
        self.seed = sd["seed"]
        self._generator.set_state(sd["generator"])
        self._engine.load_state_dict(sd["engine"])
        self._held = {
            int(sid): SizingItem.from_state(d["unsized"]) if "unsized" in d else PatchedSample(d["tokens"], d["coords"], tuple(d["grid"]), d["key"], d["meta"])
            for sid, d in sd["held"].items()
        }
        self._ready = deque(list(b) for b in sd["ready"])
        self._window = [int(sid) for sid in sd.get("window", [])]
        self._next_id = int(sd["next_id"])
        f = sd["feature"]
        self._feature = None if f is None else (int(f[0]), getattr(torch, f[1]))
        stats = dict(sd["stats"])
        stats["dropped_by_reason"] = dict(stats["dropped_by_reason"])
        self.stats = PackerStats(**stats)
