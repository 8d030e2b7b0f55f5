"""`varlen_attention`: the one public entry point; validation, then dispatch to a backend.

The interface and its docstring follow flash-attention's `flash_attn_varlen_func`
(Dao-AILab/flash-attention), so a call written for flash-attn runs here unchanged.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S segments,
S1 = S + 1.
"""

from __future__ import annotations

import math

import torch

from .dispatch import needs_grad_of, resolve_backend
from .flex import VarlenBlockMask
from .validate import validate_varlen_inputs


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    backend: str = "auto",
    validate: bool = True,
    block_mask: VarlenBlockMask | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length segments: segment i of q attends to segment i of k/v
    only. Self-attention passes the same segmentation twice; cross-attention (video tokens to
    their caption tokens) passes two different ones with the same number of segments.

    Arguments:
        q: (total_q, nheads, headdim), float16 | bfloat16 | float32; total_q = cu_seqlens_q[-1].
        k: (total_k, nheads_k, headdim), same dtype and device as q; total_k = cu_seqlens_k[-1].
        v: (total_k, nheads_k, headdim), same dtype and device as q.
            nheads % nheads_k == 0: query head h reads kv head h // (nheads // nheads_k)
            (GQA; nheads_k == 1 is MQA). Do not repeat k/v yourself.
        cu_seqlens_q: (S + 1,), int32, on q's device. Cumulative segment lengths of q:
            0 = cu[0] <= cu[1] <= ... <= cu[S] = total_q. Segment i is rows cu[i]:cu[i+1].
        cu_seqlens_k: (S + 1,), int32, on q's device. The same for k/v; same S as cu_seqlens_q.
            Segments of length 0 are allowed on either side (padding runs are segments too):
            a q segment of length 0 produces no rows; a q segment whose k segment has length 0
            attends to nothing and its output rows are exactly 0 (gradients 0 too).
        max_seqlen_q: python int >= the longest q segment (host side: no .item() in forward).
        max_seqlen_k: python int >= the longest k segment.
        softmax_scale: float. Scaling of QK^T before softmax. Default 1 / sqrt(headdim).
        causal: bool. Causal mask inside each segment, aligned to the bottom-right corner when
            seqlen_q != seqlen_k (as flash-attention >= 2.1). For seqlen_q = 2, seqlen_k = 5
            (1 = attend, 0 = masked):
                1 1 1 1 0
                1 1 1 1 1
            For seqlen_q = 5, seqlen_k = 2:
                0 0
                0 0
                0 0
                1 0
                1 1
            A row with no allowed key (the first three above) outputs 0.
            Non-causal, the mask over the packed sequence is block diagonal, e.g. q segments
            [2, 3] with k segments [3, 1]:
                1 1 1 0
                1 1 1 0
                0 0 0 1
                0 0 0 1
                0 0 0 1
        backend: "auto" | "flash" | "triton" | "xformers" | "flex" | "cpu" | "reference".
            "auto" takes the first of (flash, triton, xformers, flex, cpu, reference) that has
            no reason against these inputs (triton and flex only on CUDA). A named backend that
            cannot run raises BackendUnavailableError listing its reasons; so does "auto" when
            nothing fits, listing every backend. See `explain(...)` to log the choice.
        validate: bool. Check shapes, dtypes and devices (metadata only, always cheap); when
            cu_seqlens is on the CPU also its values (starts at 0, non-decreasing, ends at the
            token count, max_seqlen large enough). Values on an accelerator are never checked:
            that would cost a host sync per call. Pass False in a hot loop once the batch layout
            has been checked.
        block_mask: optional `make_block_mask(...)` result, used by the "flex" backend to share
            one BlockMask across layers; without it flex builds one and caches it on the
            cu_seqlens tensor objects (see flex.FlexMaskCache).
    Return:
        out: (total_q, nheads, headdim), dtype of q.
    Raises:
        ValueError: malformed inputs, naming the offending values.
        BackendUnavailableError: the requested backend (or every backend) cannot run.
    """
    if validate:
        validate_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               softmax_scale=softmax_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    needs_grad = needs_grad_of(q, k, v)
    chosen = resolve_backend(q, k, v, causal, needs_grad, backend)
    extra = {"block_mask": block_mask} if block_mask is not None else {}
    return chosen.run(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, **extra
    )
