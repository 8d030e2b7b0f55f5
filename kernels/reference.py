"""Ground-truth varlen attention: a per-segment loop of explicit matmul + masked softmax.

Never optimised, on purpose: every fast backend is tested against it. The math and the causal
convention follow flash-attention's `attention_ref` (Dao-AILab/flash-attention, tests/test_util.py):
causal is aligned to the bottom-right corner when seqlen_q != seqlen_k, a query row that sees no key
outputs zeros, and `upcast=False` runs the same math in the input precision as the
"low-precision baseline" of the relative tolerance rule.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S1 = segments + 1,
Lq/Lk one segment's q/k length.
"""

from __future__ import annotations

import math

import torch

from .backend import Backend, Capabilities


def causal_mask(len_q: int, len_k: int, device: torch.device) -> torch.Tensor:
    """Bool [Lq, Lk], True where query i may attend key j: j <= i + (Lk - Lq) (bottom-right)."""
    i_L1 = torch.arange(len_q, device=device)[:, None]
    j_1L = torch.arange(len_k, device=device)[None, :]
    return j_1L <= i_L1 + (len_k - len_q)


def reference_varlen_attention(
    q_TNH: torch.Tensor,
    k_UGH: torch.Tensor,
    v_UGH: torch.Tensor,
    cu_seqlens_q_S1: torch.Tensor,
    cu_seqlens_k_S1: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    upcast: bool = True,
) -> torch.Tensor:
    """Explicit attention per segment. upcast=True computes in float32 (float64 stays float64);
    upcast=False computes in the input dtype. Returns q's dtype, shape [T, N, H]."""
    nheads, headdim = q_TNH.shape[1], q_TNH.shape[2]
    group = nheads // k_UGH.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(headdim)
    compute = q_TNH.dtype
    if upcast and q_TNH.dtype in (torch.float16, torch.bfloat16):
        compute = torch.float32
    cu_q, cu_k = cu_seqlens_q_S1.tolist(), cu_seqlens_k_S1.tolist()  # host sync on GPU: fine here
    outs = []
    for s in range(len(cu_q) - 1):
        q_LNH = q_TNH[cu_q[s] : cu_q[s + 1]].to(compute)
        k_LNH = k_UGH[cu_k[s] : cu_k[s + 1]].to(compute).repeat_interleave(group, dim=1)
        v_LNH = v_UGH[cu_k[s] : cu_k[s + 1]].to(compute).repeat_interleave(group, dim=1)
        len_q, len_k = q_LNH.shape[0], k_LNH.shape[0]
        scores_NLL = torch.einsum("qnh,knh->nqk", q_LNH * scale, k_LNH)
        allowed_LL = torch.ones(len_q, len_k, dtype=torch.bool, device=q_TNH.device)
        if causal:
            allowed_LL = causal_mask(len_q, len_k, q_TNH.device)
        # finfo.min instead of -inf: a row with no allowed key becomes uniform, then is zeroed by
        # the mask product below, so it yields zeros and finite gradients instead of NaN
        scores_NLL = scores_NLL.masked_fill(~allowed_LL, torch.finfo(compute).min)
        probs_NLL = torch.softmax(scores_NLL, dim=-1) * allowed_LL
        outs.append(torch.einsum("nqk,knh->qnh", probs_NLL, v_LNH).to(q_TNH.dtype))
    if not outs:
        return q_TNH.new_zeros(q_TNH.shape)
    return torch.cat(outs, dim=0)


def _run(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, **extra):
    return reference_varlen_attention(q, k, v, cu_q, cu_k, softmax_scale, causal)


CAPS = Capabilities(
    name="reference",
    devices=("cpu", "cuda"),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    backward_devices=("cpu", "cuda"),
    deterministic=True,
)
BACKEND = Backend(caps=CAPS, run=_run)
