"""xformers memory-efficient attention with a block-diagonal bias (facebookresearch/xformers
`ops/fmha`), imported lazily.

The packed batch is one sequence of B=1 with `BlockDiagonalMask.from_seqlens`; causal uses
`BlockDiagonalCausalFromBottomRightMask`, which matches flash-attention's bottom-right convention.
GQA uses fmha's 5-D [B, M, G, heads_per_group, K] layout with k/v expanded (a view, no copy).
Cost: `from_seqlens` wants host lists, so cu_seqlens on the GPU costs one device->host copy per call.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S1 = segments + 1.
"""

from __future__ import annotations

import importlib.util

import torch

from .backend import Backend, Capabilities


def _import_error() -> str | None:
    if importlib.util.find_spec("xformers") is None:
        return "xformers not installed (pip install xformers)"
    return None


def _extra_reasons(q, k, v, causal, needs_grad):
    reason = _import_error()
    return [reason] if reason else []


def _run(q_TNH, k_UGH, v_UGH, cu_q_S1, cu_k_S1, max_q, max_k, softmax_scale, causal, **extra):
    from xformers.ops import fmha

    cu_q, cu_k = cu_q_S1.tolist(), cu_k_S1.tolist()  # host sync on GPU, see module docstring
    seqlens_q = [b - a for a, b in zip(cu_q[:-1], cu_q[1:], strict=True)]
    seqlens_k = [b - a for a, b in zip(cu_k[:-1], cu_k[1:], strict=True)]
    mask_cls = (
        fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask
        if causal
        else fmha.attn_bias.BlockDiagonalMask
    )
    attn_bias = mask_cls.from_seqlens(seqlens_q, seqlens_k)
    total_q, nheads, headdim = q_TNH.shape
    nheads_k = k_UGH.shape[1]
    group = nheads // nheads_k
    q_1TGRH = q_TNH.view(1, total_q, nheads_k, group, headdim)
    k_1UGRH = k_UGH[None, :, :, None, :].expand(-1, -1, -1, group, -1)
    v_1UGRH = v_UGH[None, :, :, None, :].expand(-1, -1, -1, group, -1)
    out_1TGRH = fmha.memory_efficient_attention(
        q_1TGRH, k_1UGRH, v_1UGRH, attn_bias=attn_bias, scale=softmax_scale
    )
    return out_1TGRH.reshape(total_q, nheads, headdim)


CAPS = Capabilities(
    name="xformers",
    devices=("cuda",),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    backward_devices=("cuda",),
)
BACKEND = Backend(caps=CAPS, run=_run, extra_reasons=_extra_reasons)
