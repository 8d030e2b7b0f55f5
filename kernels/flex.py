"""Varlen attention with PyTorch FlexAttention and a document (segment-id) mask.

References: "FlexAttention" (PyTorch blog, 2024) document masking; flash-attention's bottom-right
causal convention. Building a BlockMask costs a pass over (T/128) x (U/128) blocks, so build it once
per packed batch and reuse it in every layer: either pass `make_block_mask(...)` explicitly to
`varlen_attention(..., block_mask=...)`, or rely on `FlexMaskCache`, which reuses the last mask while
the *same* cu_seqlens tensor objects (unchanged in place) come back.

On CUDA the kernel is `torch.compile(flex_attention)`. On CPU the eager path materialises the full
[N, T, U] score matrix and has no backward: it exists to check correctness, not for speed.
Not NaN-safe: masked scores become probability 0, but 0 * NaN in P @ V is NaN, so a NaN in any
k/v row sharing a block (on CPU: anywhere) poisons other segments. Padding must be finite (the
packer zeroes it); the cpu and reference backends do not have this weakness.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S segments,
S1 = S + 1.
"""

from __future__ import annotations

import importlib.util
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from .backend import Backend, Capabilities

_FLEX_MODULE = "torch.nn.attention.flex_attention"
_compiled_flex = None  # torch.compile'd flex_attention, built on first CUDA use


def flex_available() -> str | None:
    """None if FlexAttention can be imported, else the reason."""
    if importlib.util.find_spec(_FLEX_MODULE) is None:
        return f"{_FLEX_MODULE} not found in torch {torch.__version__} (needs torch >= 2.5)"
    return None


@dataclass(frozen=True)
class VarlenBlockMask:
    """A FlexAttention BlockMask for one packed batch, plus what it was built for."""

    block_mask: Any  # torch.nn.attention.flex_attention.BlockMask
    total_q: int
    total_k: int
    causal: bool


def _segment_ids_T(cu_S1: torch.Tensor, total: int) -> torch.Tensor:
    lens_S = (cu_S1[1:] - cu_S1[:-1]).long()
    ids_S = torch.arange(len(lens_S), device=cu_S1.device)
    # output_size given: no device->host sync to size the result
    return torch.repeat_interleave(ids_S, lens_S, output_size=total)


def make_block_mask(
    cu_seqlens_q_S1: torch.Tensor,
    cu_seqlens_k_S1: torch.Tensor,
    total_q: int,
    total_k: int,
    causal: bool = False,
) -> VarlenBlockMask:
    """Document mask: q token in segment i attends k token in segment i only; with causal, key
    position j <= i + (len_k - len_q) inside the segment (bottom-right, as flash-attention)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg_q_T = _segment_ids_T(cu_seqlens_q_S1, total_q)
    seg_k_U = _segment_ids_T(cu_seqlens_k_S1, total_k)
    # causal in packed coordinates: kv_idx <= q_idx + (end_k - end_q) of the shared segment
    offset_S = (cu_seqlens_k_S1[1:] - cu_seqlens_q_S1[1:]).long()

    def mask_mod(b, h, q_idx, kv_idx):
        same = seg_q_T[q_idx] == seg_k_U[kv_idx]
        if causal:
            return same & (kv_idx <= q_idx + offset_S[seg_q_T[q_idx]])
        return same

    block_mask = create_block_mask(
        mask_mod, None, None, total_q, total_k, device=cu_seqlens_q_S1.device
    )
    return VarlenBlockMask(block_mask, total_q, total_k, causal)


class FlexMaskCache:
    """Single-entry cache: hit when called again with the same cu_seqlens objects, unmodified.

    Keyed on weak references and the tensors' in-place version counters, never on data_ptr (a
    freed-and-reused address would silently return a stale mask) and never on values (a GPU sync).
    """

    def __init__(self) -> None:
        self._refs: tuple[weakref.ref, weakref.ref] | None = None
        self._key: tuple | None = None
        self._mask: VarlenBlockMask | None = None
        self.builds = 0  # for tests and logging: how many masks were built

    def get(self, cu_q_S1, cu_k_S1, total_q: int, total_k: int, causal: bool) -> VarlenBlockMask:
        key = (cu_q_S1._version, cu_k_S1._version, total_q, total_k, causal)
        if (
            self._refs is not None
            and self._refs[0]() is cu_q_S1
            and self._refs[1]() is cu_k_S1
            and self._key == key
        ):
            return self._mask
        self._mask = make_block_mask(cu_q_S1, cu_k_S1, total_q, total_k, causal)
        self._refs = (weakref.ref(cu_q_S1), weakref.ref(cu_k_S1))
        self._key = key
        self.builds += 1
        return self._mask


DEFAULT_MASK_CACHE = FlexMaskCache()


def flex_varlen_attention(
    q_TNH, k_UGH, v_UGH, cu_seqlens_q_S1, cu_seqlens_k_S1, softmax_scale, causal,
    block_mask: VarlenBlockMask | None = None,
):
    from torch.nn.attention.flex_attention import flex_attention

    total_q, total_k = q_TNH.shape[0], k_UGH.shape[0]
    if block_mask is None:
        block_mask = DEFAULT_MASK_CACHE.get(
            cu_seqlens_q_S1, cu_seqlens_k_S1, total_q, total_k, causal
        )
    elif (block_mask.total_q, block_mask.total_k, block_mask.causal) != (total_q, total_k, causal):
        raise ValueError(
            f"block_mask was built for total_q={block_mask.total_q}, total_k={block_mask.total_k}, "
            f"causal={block_mask.causal}; this call has {total_q}, {total_k}, {causal}"
        )
    q_1NTH, k_1GUH, v_1GUH = (x.transpose(0, 1)[None] for x in (q_TNH, k_UGH, v_UGH))
    kwargs = dict(
        block_mask=block_mask.block_mask, scale=softmax_scale,
        enable_gqa=q_TNH.shape[1] != k_UGH.shape[1],
    )
    if q_TNH.device.type == "cuda":
        global _compiled_flex
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        out_1NTH = _compiled_flex(q_1NTH, k_1GUH, v_1GUH, **kwargs)
    else:
        with warnings.catch_warnings():  # the "unfused without torch.compile" warning is known here
            warnings.simplefilter("ignore", UserWarning)
            out_1NTH = flex_attention(q_1NTH, k_1GUH, v_1GUH, **kwargs)
    return out_1NTH[0].transpose(0, 1)


def _extra_reasons(q, k, v, causal, needs_grad):
    reason = flex_available()
    return [reason] if reason else []


def _run(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, block_mask=None, **extra):
    return flex_varlen_attention(q, k, v, cu_q, cu_k, softmax_scale, causal, block_mask)


CAPS = Capabilities(
    name="flex",
    devices=("cpu", "cuda"),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    backward_devices=("cuda",),
    auto_devices=("cuda",),  # CPU eager flex materialises [N, T, U] scores: never a good default
)
BACKEND = Backend(caps=CAPS, run=_run, extra_reasons=_extra_reasons)
