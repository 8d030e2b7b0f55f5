"""Input checks for `varlen_attention`, shared by every backend.

The layout is flash-attention's `flash_attn_varlen_func` (Dao-AILab/flash-attention):
tokens of all segments concatenated along dim 0, segment boundaries in `cu_seqlens`.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S segments, S1 = S + 1.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_cu_seqlens_meta(name: str, cu_S1: torch.Tensor, device: torch.device) -> None:
    if not isinstance(cu_S1, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(cu_S1).__name__}")
    if cu_S1.dtype != torch.int32:
        raise ValueError(f"{name} must be int32, got dtype={cu_S1.dtype}")
    if cu_S1.dim() != 1 or cu_S1.numel() < 1:
        raise ValueError(f"{name} must be 1-D with at least one entry, got shape={tuple(cu_S1.shape)}")
    if cu_S1.device != device:
        raise ValueError(f"{name} is on {cu_S1.device} but q is on {device}")


def _check_cu_seqlens_values(name: str, cu: list[int], total: int, max_seqlen: int) -> None:
    if cu[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {cu[0]}")
    for i in range(len(cu) - 1):
        if cu[i + 1] < cu[i]:
            raise ValueError(
                f"{name} must be non-decreasing: {name}[{i}]={cu[i]} > {name}[{i + 1}]={cu[i + 1]}"
            )
    if cu[-1] != total:
        raise ValueError(f"{name}[-1]={cu[-1]} does not match the number of tokens {total}")
    longest = max((b - a for a, b in zip(cu[:-1], cu[1:], strict=True)), default=0)
    if longest > max_seqlen:
        name_max = name.replace("cu_seqlens", "max_seqlen")
        raise ValueError(f"{name_max}={max_seqlen} is smaller than the longest segment ({longest})")


def validate_varlen_inputs(
    q_TNH: torch.Tensor,
    k_UGH: torch.Tensor,
    v_UGH: torch.Tensor,
    cu_seqlens_q_S1: torch.Tensor,
    cu_seqlens_k_S1: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    softmax_scale: float | None = None,
) -> None:
    """Raise ValueError naming the offending values; return None when the inputs are well formed.

    Shape, dtype and device checks are always done (metadata only). The checks on the *values* of
    cu_seqlens (start at 0, non-decreasing, end at the token count, max_seqlen large enough) run
    only when cu_seqlens lives on the CPU: on an accelerator they would cost a host sync per call.
    """
    for name, t in (("q", q_TNH), ("k", k_UGH), ("v", v_UGH)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(
                f"{name} must have rank 3 (total_tokens, nheads, headdim), got shape={tuple(t.shape)}"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} dtype={t.dtype} not supported; use float16, bfloat16 or float32")
    if not (q_TNH.dtype == k_UGH.dtype == v_UGH.dtype):
        raise ValueError(
            f"q, k, v must share one dtype, got q={q_TNH.dtype}, k={k_UGH.dtype}, v={v_UGH.dtype}"
        )
    if not (q_TNH.device == k_UGH.device == v_UGH.device):
        raise ValueError(
            f"q, k, v must be on one device, got q={q_TNH.device}, k={k_UGH.device}, v={v_UGH.device}"
        )
    if k_UGH.shape != v_UGH.shape:
        raise ValueError(f"k and v shapes differ: k={tuple(k_UGH.shape)}, v={tuple(v_UGH.shape)}")
    nheads, headdim = q_TNH.shape[1], q_TNH.shape[2]
    nheads_k, headdim_k = k_UGH.shape[1], k_UGH.shape[2]
    if headdim != headdim_k:
        raise ValueError(f"headdim mismatch: q has {headdim}, k/v have {headdim_k}")
    if headdim < 1 or nheads < 1:  # the default scale is 1/sqrt(headdim); no head, no attention
        raise ValueError(f"nheads and headdim must be >= 1, got q shape={tuple(q_TNH.shape)}")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
                                      or not math.isfinite(softmax_scale)):
        raise ValueError(f"softmax_scale must be a finite number or None, got {softmax_scale!r}")
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(
            f"nheads={nheads} of q must be a multiple of nheads_k={nheads_k} of k/v (GQA/MQA)"
        )
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        # bool is an int subclass; a tensor here would mean a .item() sync somewhere upstream
        if not isinstance(m, int) or isinstance(m, bool) or m < 0:
            raise ValueError(f"{name} must be a non-negative python int, got {m!r}")

    _check_cu_seqlens_meta("cu_seqlens_q", cu_seqlens_q_S1, q_TNH.device)
    _check_cu_seqlens_meta("cu_seqlens_k", cu_seqlens_k_S1, q_TNH.device)
    if cu_seqlens_q_S1.numel() != cu_seqlens_k_S1.numel():
        raise ValueError(
            f"len(cu_seqlens_q)={cu_seqlens_q_S1.numel()} != len(cu_seqlens_k)={cu_seqlens_k_S1.numel()}:"
            " segment i of q attends to segment i of k, so both need the same number of segments"
        )
    if cu_seqlens_q_S1.device.type == "cpu":
        _check_cu_seqlens_values(
            "cu_seqlens_q", cu_seqlens_q_S1.tolist(), q_TNH.shape[0], max_seqlen_q
        )
        _check_cu_seqlens_values(
            "cu_seqlens_k", cu_seqlens_k_S1.tolist(), k_UGH.shape[0], max_seqlen_k
        )
