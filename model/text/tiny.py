"""A tiny trainable caption encoder for tests and synthetic captions: no vocabulary file.

Words are maximal runs of letters and digits, lowercased ("A red-circle, 7!" -> a, red,
circle, 7). Each word is hashed with zlib.crc32 into `buckets` rows; crc32 is the same in
every process, unlike the builtin hash() that PYTHONHASHSEED salts. Hash collisions are
softened the fastText way (Bojanowski et al. 2017, "Enriching Word Vectors with Subword
Information"): a word's embedding is its word row plus the mean of the rows of its character
trigrams ("<red>" -> "<re", "red", "ed>"), so two words that share a word bucket still differ,
and words of one stem ("moves", "moving") share features.

Then a learned position per word, `layers` pre-norm transformer layers, each caption
attending only to itself, and a final LayerNorm. A caption with no word ("" or only
punctuation) is the null caption of classifier-free guidance: one learned null token.
Captions longer than `max_tokens` words keep their first `max_tokens` words.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import check_captions, empty_text

__all__ = ["TinyTextConfig", "TinyTextEncoder", "tiny_words", "tiny_token_ids"]

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" splits words too
_NULL_ID = 0  # word row 0 is the null token; hashed words use rows 1..buckets


@dataclass
class TinyTextConfig:
    dim: int = 64  # output feature size: what the DiT's cross-attention reads
    buckets: int = 4096  # hashed rows for words and, separately, for trigrams
    max_tokens: int = 32  # words kept per caption; later words are dropped, not an error
    layers: int = 2  # transformer layers over each caption; 0 = positioned bag of words
    heads: int = 4  # attention heads per layer; must divide dim


def tiny_words(caption: str, *, max_tokens: int) -> list[str]:
    """The words the tiny encoder sees, truncated to `max_tokens`; [] is the null caption."""
    return _WORD.findall(caption.lower())[:max_tokens]


def _bucket(kind: str, text: str, buckets: int) -> int:
    # The kind prefix keeps a word and an equal trigram ("red") in unrelated rows.
    return zlib.crc32(f"{kind}:{text}".encode()) % buckets


def _trigrams(word: str) -> list[str]:
    marked = f"<{word}>"  # >= 3 chars since a word has >= 1
    return [marked[i : i + 3] for i in range(len(marked) - 2)]


def tiny_token_ids(caption: str, *, buckets: int, max_tokens: int) -> list[int]:
    """Word-row ids of one caption: [0] for the null caption, else 1 + crc32 bucket per word."""
    words = tiny_words(caption, max_tokens=max_tokens)
    if not words:
        return [_NULL_ID]
    return [1 + _bucket("w", w, buckets) for w in words]


class TinyTextEncoder(nn.Module):
    """Captions -> (text_tokens (total_tokens, dim) float32, text_lengths (S,) int64)."""

    trainable = True

    def __init__(self, config: TinyTextConfig | None = None):
        super().__init__()
        c = config or TinyTextConfig()
        bad = {k: v for k, v in vars(c).items() if not isinstance(v, int) or v < 0}
        if bad or min(c.dim, c.buckets, c.max_tokens, c.heads) < 1 or c.dim % c.heads:
            raise ValueError(f"bad TinyTextConfig {c}: need positive ints and heads | dim")
        self.config = c
        self.dim = c.dim
        self.word = nn.Embedding(c.buckets + 1, c.dim)  # row 0: the null token
        self.gram = nn.EmbeddingBag(c.buckets, c.dim, mode="mean")  # empty bag -> zeros
        self.pos = nn.Embedding(c.max_tokens, c.dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.dim,
                c.heads,
                dim_feedforward=4 * c.dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(c.layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # GPT-2-style small embeddings; the final LayerNorm sets the output scale anyway.
        for emb in (self.word, self.gram, self.pos):
            nn.init.normal_(emb.weight, std=0.02)

    def _ids(self, captions: list[str]) -> tuple[list[int], list[int], list[int], list[int]]:
        """Host-side hashing: word ids, flat trigram ids, trigram bag offsets, lengths."""
        c = self.config
        word_ids: list[int] = []
        gram_ids: list[int] = []
        offsets: list[int] = []
        lengths: list[int] = []
        for caption in captions:
            words = tiny_words(caption, max_tokens=c.max_tokens)
            lengths.append(max(len(words), 1))
            if not words:
                word_ids.append(_NULL_ID)
                offsets.append(len(gram_ids))  # empty bag: the null token has no trigrams
            for w in words:
                word_ids.append(1 + _bucket("w", w, c.buckets))
                offsets.append(len(gram_ids))
                gram_ids.extend(_bucket("g", g, c.buckets) for g in _trigrams(w))
        return word_ids, gram_ids, offsets, lengths

    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        captions = check_captions(captions)
        device = self.word.weight.device
        if not captions:
            return empty_text(self.dim, device)
        word_ids, gram_ids, offsets, lengths_py = self._ids(captions)
        as_long = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        lengths = as_long(lengths_py)  # (S,)
        pos = torch.cat([torch.arange(n, device=device) for n in lengths_py])  # (T,)
        x = self.word(as_long(word_ids)) + self.gram(as_long(gram_ids), as_long(offsets))
        x = x + self.pos(pos)  # (T, D)
        if len(self.blocks):
            # Pad to (S, Lmax, D) so each caption attends to itself only; Lmax <= max_tokens.
            keep = pos.new_tensor(range(max(lengths_py))) < lengths.unsqueeze(1)  # (S, Lmax)
            padded = x.new_zeros(*keep.shape, self.dim)
            padded[keep] = x
            for block in self.blocks:
                padded = block(padded, src_key_padding_mask=~keep)  # (S, Lmax, D)
            x = padded[keep]  # (T, D)
        return self.norm(x).float(), lengths
