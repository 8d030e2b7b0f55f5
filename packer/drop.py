"""Token dropping: keep a random subset of a sample's tokens, in their original order.

Legend: N tokens before dropping, K kept, D features.

The rate is a float, a function of the (T', H', W') patch grid, or a (lo, hi) range
drawn per sample: NaViT's token dropout (Dehghani et al. 2023, section 3.3) and
lucidrains/vit-pytorch na_vit's `token_dropout_prob` (float or fn of (h, w)).
Kept tokens carry their coords, so positions stay exact after dropping.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["drop_tokens", "keep_tokens", "resolve_drop_rate"]


def keep_tokens(tokens_ND: Tensor, coords_N3: Tensor, keep: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Keep exactly `keep` tokens chosen uniformly at random, in their original order."""
    n = int(tokens_ND.shape[0])
    if not 0 <= keep <= n:
        raise ValueError(f"keep={keep} outside [0, {n}]")
    if keep == n:
        return tokens_ND, coords_N3
    idx_K = torch.randperm(n, generator=generator)[:keep].sort().values
    return tokens_ND[idx_K], coords_N3[idx_K]


def drop_tokens(tokens_ND: Tensor, coords_N3: Tensor, rate: float, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Drop floor(rate * N) tokens at random (at least one token is always kept)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop rate must be in [0, 1), got {rate}")
    n = int(tokens_ND.shape[0])
    keep = max(min(n, 1), n - math.floor(rate * n))
    return keep_tokens(tokens_ND, coords_N3, keep, generator=generator)


def resolve_drop_rate(spec, grid: tuple[int, int, int], *, generator: torch.Generator) -> float:
    """The rate for one sample: spec is a float, a fn(grid) -> float, or (lo, hi) for U(lo, hi)."""
    if isinstance(spec, tuple):
        lo, hi = spec
        return lo + (hi - lo) * float(torch.rand((), generator=generator))
    rate = float(spec(grid)) if callable(spec) else float(spec)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop rate for grid {grid} must be in [0, 1), got {rate}")
    return rate
