"""StreamPacker: online packing of a sample stream into fixed [rows, max_len] PackedBatches.

Legend: N tokens of a sample, D features, B rows, L = max_len.

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
bytes (buffer=64, L=4096, D=64 fp32: ~70 MB), plus O(buffer) ints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from .batch import PackedBatch, PatchedSample, pack
from .bins import make_engine
from .config import PackerConfig
from .drop import keep_tokens
from .errors import SampleError

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

    @property
    def fill(self) -> float:
        return self.tokens_packed / self.slots if self.slots else 0.0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def __getitem__(self, name: str):
        return getattr(self, name)

    def as_dict(self) -> dict:
        return {**asdict(self), "fill": self.fill, "dropped": self.dropped}

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
    """Online packer: `pack(iterable of PatchedSample) -> Iterator[PackedBatch]`, each batch
    exactly config.rows x config.max_len. See the module docstring for policies."""

    def __init__(self, config: PackerConfig, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.stats = PackerStats()
        self._engine = make_engine(
            config.policy,
            config.max_len,
            open_bins=config.buffer,
            max_shrink=config.max_shrink if config.fill_to_exact else 0.0,
            min_tokens=config.min_tokens,
        )
        self._generator = torch.Generator().manual_seed(seed)
        self._held: dict[int, PatchedSample] = {}  # buffered samples by stream id
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

    def push(self, sample: PatchedSample) -> None:
        """Take one sample; closed rows queue up until `rows` of them make a batch."""
        self.stats.samples_in += 1
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
        self._ready.extend(self._engine.flush())
        out = list(self._emit())
        if self._ready:
            out.append(self._materialise([self._ready.popleft() for _ in range(len(self._ready))]))
        return out

    @property
    def pending(self) -> int:
        """Samples held (in open or queued rows)."""
        return len(self._held)

    # ---- internals -----------------------------------------------------------------
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
        if self._engine.closed:
            self._ready.extend(self._engine.closed)
            self._engine.closed.clear()

    def _emit(self) -> Iterator[PackedBatch]:
        rows = self.config.rows
        while len(self._ready) >= rows:
            yield self._materialise([self._ready.popleft() for _ in range(rows)])

    def _materialise(self, bins: list[list[int]]) -> PackedBatch:
        samples, plan = [], []
        for bin_ in bins:
            row = []
            for sid in bin_:
                s = self._held.pop(sid)
                target = self._engine.shrunk.pop(sid, None)
                if target is not None and target < len(s):
                    self.stats.shrunk_samples += 1
                    self.stats.shrunk_tokens += len(s) - target
                    tokens, coords = keep_tokens(s.tokens, s.coords, target, generator=self._generator)
                    s = PatchedSample(tokens, coords, s.grid, s.key, s.meta)
                row.append(len(samples))
                samples.append(s)
            plan.append(row)
        batch = pack(samples, plan, self.config.max_len, rows=self.config.rows)
        st = self.stats
        st.batches += 1
        st.samples_packed += len(samples)
        st.tokens_packed += int(batch.num_tokens.sum())
        st.slots += self.config.rows * self.config.max_len
        return batch

    # ---- checkpointing -------------------------------------------------------------
    _CHECKED = ("max_len", "rows", "policy", "buffer", "fill_to_exact", "max_shrink", "min_tokens", "oversize")

    def state_dict(self) -> dict:
        """Everything needed to resume bitwise; tensors are referenced, not copied."""
        return {
            "version": 1,
            "config": {k: getattr(self.config, k) for k in self._CHECKED},
            "seed": self.seed,
            "generator": self._generator.get_state(),
            "engine": self._engine.state_dict(),
            "held": {sid: {"tokens": s.tokens, "coords": s.coords, "grid": tuple(s.grid), "key": s.key, "meta": s.meta} for sid, s in self._held.items()},
            "ready": [list(b) for b in self._ready],
            "next_id": self._next_id,
            "feature": None if self._feature is None else (self._feature[0], str(self._feature[1]).removeprefix("torch.")),
            "stats": asdict(self.stats),
        }

    def load_state_dict(self, sd: dict) -> None:
        mismatch = {k: (v, getattr(self.config, k)) for k, v in sd["config"].items() if getattr(self.config, k) != v}
        if mismatch:
            raise ValueError(f"state_dict was saved with a different config (saved, current): {mismatch}")
        self.seed = sd["seed"]
        self._generator.set_state(sd["generator"])
        self._engine.load_state_dict(sd["engine"])
        self._held = {int(sid): PatchedSample(d["tokens"], d["coords"], tuple(d["grid"]), d["key"], d["meta"]) for sid, d in sd["held"].items()}
        self._ready = deque(list(b) for b in sd["ready"])
        self._next_id = int(sd["next_id"])
        f = sd["feature"]
        self._feature = None if f is None else (int(f[0]), getattr(torch, f[1]))
        stats = dict(sd["stats"])
        stats["dropped_by_reason"] = dict(stats["dropped_by_reason"])
        self.stats = PackerStats(**stats)
