"""What every text encoder shares: caption checks, caption dropout for CFG, mean pooling.

The encoder contract (see model/text/__init__.py) returns captions as a varlen layout, the same
way the packer lays out video tokens: `text_tokens` (total_tokens, dim) holds every
caption's token embeddings back to back in caption order, `text_lengths` (S,) int64
holds how many tokens each caption has (always >= 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from patchpack.packer import segment_mean

__all__ = ["check_captions", "drop_captions", "empty_text", "pool_mean"]


def check_captions(captions: Sequence[str]) -> list[str]:
    """Return `captions` as a list, or raise naming the first entry that is not a str."""
    if isinstance(captions, str):
        # A bare string would be read as one caption per character.
        raise ValueError(f"captions must be a list of str, got one str {captions[:40]!r}")
    captions = list(captions)
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise ValueError(f"caption {i} is {type(c).__name__} {c!r}, expected str")
    return captions


def empty_text(dim: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The encoding of an empty caption list: (0, dim) tokens and (0,) lengths."""
    return (
        torch.zeros(0, dim, dtype=torch.float32, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
    )


def drop_captions(
    captions: Sequence[str], p: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by the null caption "" with probability `p` (CFG training).

    Each caption is dropped independently by one draw of `torch.rand(len(captions),
    generator=generator)`, so a seeded generator gives the same drops on every run.
    The dropped count is `sum(a != b for a, b in zip(captions, result))`; captions that
    were already "" stay "" and are not counted as dropped.
    """
    captions = check_captions(captions)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout p={p} is outside [0, 1]")
    if not captions:
        return []
    drop = torch.rand(len(captions), generator=generator) < p
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def pool_mean(text_tokens: Tensor, text_lengths: Tensor) -> Tensor:
    """Mean of each caption's tokens: (total_tokens, dim), (S,) -> (S, dim).

    Sentence-transformers pools all-MiniLM-L6-v2 this way (mean over the attention mask);
    a DiT may also use it as a pooled caption vector for adaLN conditioning.
    """
    if text_lengths.ndim != 1 or int(text_lengths.sum()) != text_tokens.shape[0]:
        raise ValueError(
            f"text_lengths {tuple(text_lengths.shape)} summing to {int(text_lengths.sum())} "
            f"does not cover text_tokens {tuple(text_tokens.shape)}"
        )
    if bool((text_lengths <= 0).any()):
        raise ValueError(f"every caption needs >= 1 token, got lengths {text_lengths.tolist()}")
    return segment_mean(text_tokens, text_lengths)
