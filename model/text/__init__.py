"""Pluggable caption encoders for the packed DiT's cross-attention.

Every encoder is an nn.Module with
    .dim: int          output feature size
    .trainable: bool   False for frozen pretrained encoders (no grads, eval mode)
    forward(captions: list[str]) -> (text_tokens, text_lengths)
        text_tokens  (total_tokens, dim) float32: every caption's tokens back to back, in order
        text_lengths (S,) int64: tokens per caption, each >= 1; the null caption "" (classifier-
                     free guidance) has tokens too
The lengths give the caption segments of varlen cross-attention (PackedBatch.cross_cu_seqlens).

    spec        encoder                        trainable  dim
    "tiny"      TinyTextEncoder (hashed words)  yes        64 (TinyTextConfig fields as kwargs)
    "minilm"    MiniLMTextEncoder               no         384 (needs patchpack[text])
    a directory HFTextEncoder(path)             no         the model's hidden size
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from .common import drop_captions, pool_mean
from .hf import HFTextEncoder, MiniLMTextEncoder, minilm_path
from .tiny import TinyTextConfig, TinyTextEncoder, tiny_token_ids, tiny_words

__all__ = [
    "build_text_encoder",
    "drop_captions",
    "pool_mean",
    "TinyTextConfig",
    "TinyTextEncoder",
    "HFTextEncoder",
    "MiniLMTextEncoder",
    "minilm_path",
    "tiny_words",
    "tiny_token_ids",
]


def _check_kwargs(spec: str, kw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(
            f"text encoder {spec!r}: unknown options {unknown}, allowed {sorted(allowed)}"
        )


def build_text_encoder(spec: str, **kw: Any) -> nn.Module:
    """Build the encoder named by `spec`: "tiny", "minilm", or a local HF encoder directory."""
    if spec == "tiny":
        _check_kwargs(spec, kw, {f.name for f in dataclasses.fields(TinyTextConfig)})
        return TinyTextEncoder(TinyTextConfig(**kw))
    if spec == "minilm":
        _check_kwargs(spec, kw, {"max_tokens"})
        return MiniLMTextEncoder(**kw)
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec):
        _check_kwargs(str(spec), kw, {"max_tokens"})
        return HFTextEncoder(spec, **kw)
    raise ValueError(
        f"unknown text encoder {spec!r}: expected 'tiny', 'minilm' or an existing local directory "
        "of a Hugging Face encoder (hub ids are not downloaded)"
    )
