"""plan_packs_fill: fill-to-exact, for samples that are already patchified.

Whole-sample packing stalls below full rows when samples are comparable to L. NaViT
suggests sizing the last sample of a row to what remains; we do it at plan time: best
fit as usual, but a sample that fits no open row, and would fit the roomiest one after
losing at most max_shrink of its tokens (never below min_tokens), is assigned exactly
that room, so the row closes full. What it cannot fill is the room of rows closed
because the buffer overflowed, unless a sample within max_shrink of it arrives. When
native sizes are still known, `plan_sized` (sized.py) chooses whole sizes instead;
benchmarks/README.md measures both.

The returned target is applied by dropping that many extra tokens at random
(StreamPacker does so), which keeps the aspect ratio and the coords exact. Stepping the
resolution down instead also works, but needs the raw pixels/latents at hand, which a
packer downstream of patchify no longer has.
"""

from __future__ import annotations

from collections.abc import Sequence

from .bins import BestFit
from .plan import check_lengths, run_engine

__all__ = ["plan_packs_fill"]


def plan_packs_fill(
    lengths: Sequence[int],
    max_len: int,
    *,
    buffer: int | None = None,
    max_shrink: float = 0.1,
    min_tokens: int = 1,
) -> tuple[list[list[int]], list[int]]:
    """(rows, targets): best-fit rows (decreasing offline, online with buffer=k open rows)
    and each sample's token count after shrinking, with
    max(min_tokens, ceil((1 - max_shrink) * n)) <= target <= n (target == n when untouched).
    """
    if not 0.0 <= max_shrink < 1.0:
        raise ValueError(f"max_shrink must be in [0, 1), got {max_shrink}")
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    lens = check_lengths(lengths, max_len)
    engine = BestFit(max_len, open_bins=buffer, max_shrink=max_shrink, min_tokens=min_tokens)
    rows = run_engine(engine, lens, offline=buffer is None)
    targets = list(lens)
    for i, t in engine.shrunk.items():
        targets[i] = t
    return rows, targets
