"""plan_packs: which samples share a row, from token counts alone.

Policies (engines in bins.py):
  * "next_fit": one open row, closed when the next sample does not fit; the greedy
    baseline of NaViT and lucidrains/vit-pytorch `group_images_by_max_seq_len`.
  * "ffd": first fit decreasing; "bfd": best fit decreasing (Johnson 1973).

buffer=None plans offline: samples sorted by decreasing length (stable), any number of
open rows. buffer=k plans online, in arrival order, with at most k rows open: the
"decreasing" part needs the whole input, so online ffd/bfd are first fit / best fit
with a bounded set of open rows (next_fit is online by nature and ignores buffer).
Rows are returned in closing order, then the rows still open at the end.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from .bins import make_engine
from .config import POLICIES

__all__ = ["plan_packs", "check_lengths"]


def check_lengths(lengths: Sequence[int], max_len: int) -> list[int]:
    """lengths as a list of ints; ValueError naming the first index and length that is not an
    integer (a float is never truncated, Python's or numpy's) or is out of [1, max_len]."""
    if not _is_int(max_len) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    if hasattr(lengths, "dtype") and hasattr(lengths, "tolist"):  # a numpy array or a tensor: one dtype check
        if "int" not in str(lengths.dtype) or getattr(lengths, "ndim", 1) != 1:
            raise ValueError(f"lengths must be a 1-D integer array, got dtype {lengths.dtype} and shape "
                             f"{tuple(lengths.shape)}")
        lens = lengths.tolist()
    else:
        lens = list(lengths)
        bad = next((i for i, n in enumerate(lens) if not _is_int(n)), None)
        if bad is not None:
            raise ValueError(f"sample {bad} has length {lens[bad]!r} ({type(lens[bad]).__name__}); lengths are "
                             "integer token counts")
        lens = [int(n) for n in lens]
    if lens and (max(lens) > max_len or min(lens) < 1):
        i = next(i for i, n in enumerate(lens) if not 1 <= n <= max_len)
        if lens[i] < 1:
            raise ValueError(f"sample {i} has {lens[i]} tokens; every sample needs >= 1")
        raise ValueError(f"sample {i} has {lens[i]} tokens > max_len={max_len}")
    return lens


def plan_packs(lengths: Sequence[int], max_len: int, policy: str = "bfd", *, buffer: int | None = None) -> list[list[int]]:
    """Partition sample indices into rows of total length <= max_len.

    Raises ValueError naming the index and length of any sample longer than max_len.
    Cost: O(n log n) offline (the sort), O(n log L) online best fit, O(n log k) first fit.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    lens = check_lengths(lengths, max_len)
    return run_engine(make_engine(policy, max_len, open_bins=buffer), lens, offline=buffer is None and policy != "next_fit")


def run_engine(engine, lens: list[int], *, offline: bool) -> list[list[int]]:
    order = sorted(range(len(lens)), key=lens.__getitem__, reverse=True) if offline else range(len(lens))
    add = engine.add
    for i in order:
        add(i, lens[i])
    return engine.flush()


def _is_int(n: object) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)
