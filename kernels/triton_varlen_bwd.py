"""Triton varlen attention, backward kernels (FlashAttention-2 style).

References: Tri Dao, "FlashAttention-2" (2023), Algorithm 2; the Triton fused-attention
tutorial (triton-lang.org, 06-fused-attention). Written for packed varlen segments here.

Three launches, all deterministic (no atomics):
  1. preprocess: delta = rowsum(dO * O), the softmax-gradient correction term;
  2. dK/dV: one program per (k block, segment, q head), looping over q blocks;
  3. dQ: one program per (q block, segment, q head), looping over k blocks.
Recomputing P in both 2 and 3 costs one extra QK^T per pair of blocks; in exchange dQ
needs no atomics and results are bitwise reproducible. For GQA, dK/dV are written per q
head (fp32) and summed over each group in torch: simple, at the price of `group` x the
dK/dV buffer memory.

Legend: T = total tokens (all segments), N = heads, H = head dim, S = segments,
M = rows of a q block, B = columns of a k block, D = head dim padded to a power of 2.
"""

import torch
import triton
import triton.language as tl

from .triton_varlen_fwd import (
    block_sizes,
    dot,
    key_end,
    load_kv,
    load_rows,
    recompute_p,
    segment_bounds,
    use_fp32_dot,
)


@triton.jit
def _row_stats(LSE, DELTA, offs, mask):
    """The forward's lse and the preprocess's delta for some q rows. Padding rows read
    lse = +inf, so their recomputed P is exactly 0."""
    return tl.load(LSE + offs, mask=mask, other=float("inf")), tl.load(DELTA + offs, mask=mask, other=0.0)


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA,
    total, stride_ot, stride_on, stride_dot, stride_don, stride_deltan,
    headdim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < total)[:, None] & (offs_d < headdim)[None, :]
    o = load_rows(O + head * stride_on, offs_m, stride_ot, offs_d, mask).to(tl.float32)
    do = load_rows(DO + head * stride_don, offs_m, stride_dot, offs_d, mask).to(tl.float32)
    tl.store(DELTA + head * stride_deltan + offs_m, tl.sum(o * do, 1), mask=offs_m < total)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    CU_Q, CU_K,
    sm_scale,
    stride_qt, stride_qn, stride_kt, stride_kn, stride_vt, stride_vn,
    stride_dot, stride_don, stride_ln, stride_dkt, stride_dkn, stride_dvt, stride_dvn,
    headdim, group,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    seg = tl.program_id(1)
    head = tl.program_id(2)
    head_k = head // group

    q_start, len_q, k_start, len_k = segment_bounds(CU_Q, CU_K, seg)
    if pid_n * BLOCK_N < len_k:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_n = offs_n < len_k
        mask_d = offs_d < headdim
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = load_rows(K + head_k * stride_kn, k_start + offs_n, stride_kt, offs_d, kv_mask)
        v = load_rows(V + head_k * stride_vn, k_start + offs_n, stride_vt, offs_d, kv_mask)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634

        diag = len_k - len_q
        start_m = 0
        if CAUSAL:
            # Query i sees key j iff i >= j - diag: skip q blocks wholly above this k block.
            start_m = tl.maximum(pid_n * BLOCK_N - diag, 0) // BLOCK_M * BLOCK_M
        for m0 in range(start_m, len_q, BLOCK_M):
            rows = m0 + offs_m
            mask_m = rows < len_q
            qo_mask = mask_m[:, None] & mask_d[None, :]
            q = load_rows(Q + head * stride_qn, q_start + rows, stride_qt, offs_d, qo_mask)
            do = load_rows(DO + head * stride_don, q_start + rows, stride_dot, offs_d, qo_mask)
            lse, delta = _row_stats(LSE, DELTA, head * stride_ln + q_start + rows, mask_m)

            valid = mask_m[:, None] & mask_n[None, :]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= rows[:, None] + diag)
            p = recompute_p(q, k, lse, qk_scale, valid, FP32_DOT)

            dv += dot(tl.trans(p.to(do.dtype)), do, FP32_DOT)
            dp = dot(do, tl.trans(v), FP32_DOT)
            ds = p * (dp - delta[:, None])
            dk += dot(tl.trans(ds.to(q.dtype)), q, FP32_DOT)

        dk = dk * sm_scale
        tl.store(DK + (k_start + offs_n)[:, None] * stride_dkt + head * stride_dkn + offs_d[None, :],
                 dk, mask=kv_mask)
        tl.store(DV + (k_start + offs_n)[:, None] * stride_dvt + head * stride_dvn + offs_d[None, :],
                 dv, mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    CU_Q, CU_K,
    sm_scale,
    stride_qt, stride_qn, stride_kt, stride_kn, stride_vt, stride_vn,
    stride_dot, stride_don, stride_ln, stride_dqt, stride_dqn,
    headdim, group,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    seg = tl.program_id(1)
    head = tl.program_id(2)
    head_k = head // group

    q_start, len_q, k_start, len_k = segment_bounds(CU_Q, CU_K, seg)
    if pid_m * BLOCK_M < len_q:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < len_q
        mask_d = offs_d < headdim
        qo_mask = mask_m[:, None] & mask_d[None, :]
        q = load_rows(Q + head * stride_qn, q_start + offs_m, stride_qt, offs_d, qo_mask)
        do = load_rows(DO + head * stride_don, q_start + offs_m, stride_dot, offs_d, qo_mask)
        lse, delta = _row_stats(LSE, DELTA, head * stride_ln + q_start + offs_m, mask_m)
        k_base = K + k_start * stride_kt + head_k * stride_kn
        v_base = V + k_start * stride_vt + head_k * stride_vn
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634

        diag = len_k - len_q
        for start_n in range(0, key_end(pid_m, len_k, diag, CAUSAL, BLOCK_M), BLOCK_N):
            cols = start_n + offs_n
            k, v, mask_n = load_kv(k_base, v_base, cols, len_k, stride_kt, stride_vt, offs_d, mask_d)

            valid = mask_m[:, None] & mask_n[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            p = recompute_p(q, k, lse, qk_scale, valid, FP32_DOT)
            dp = dot(do, tl.trans(v), FP32_DOT)
            ds = p * (dp - delta[:, None])
            dq += dot(ds.to(k.dtype), k, FP32_DOT)

        dq = dq * sm_scale
        tl.store(DQ + (q_start + offs_m)[:, None] * stride_dqt + head * stride_dqn + offs_d[None, :],
                 dq, mask=qo_mask)


def varlen_bwd(
    dout_TNH: torch.Tensor,
    q_TNH: torch.Tensor,
    k_TNH: torch.Tensor,
    v_TNH: torch.Tensor,
    out_TNH: torch.Tensor,
    lse_NT: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels. Returns (dq, dk, dv) in the input dtypes."""
    total_q, nheads, headdim = q_TNH.shape
    total_k, nheads_k, _ = k_TNH.shape
    group = nheads // nheads_k
    num_seg = cu_seqlens_q.numel() - 1
    dev = q_TNH.device
    block_m, block_n, block_d = block_sizes(headdim)

    # fp32 accumulators; zeros so rows outside every segment get a zero gradient.
    dq_TNH = torch.zeros(total_q, nheads, headdim, dtype=torch.float32, device=dev)
    dk_TNH = torch.zeros(total_k, nheads, headdim, dtype=torch.float32, device=dev)  # per q head
    dv_TNH = torch.zeros(total_k, nheads, headdim, dtype=torch.float32, device=dev)
    delta_NT = torch.empty(nheads, total_q, dtype=torch.float32, device=dev)
    assert delta_NT.stride() == lse_NT.stride()  # the kernels index both with stride_ln

    if total_q > 0 and num_seg > 0:
        _bwd_preprocess_kernel[(triton.cdiv(total_q, block_m), nheads)](
            out_TNH, dout_TNH, delta_NT,
            total_q, out_TNH.stride(0), out_TNH.stride(1), dout_TNH.stride(0), dout_TNH.stride(1),
            delta_NT.stride(0),
            headdim,
            BLOCK_M=block_m, BLOCK_D=block_d,
        )
    common = dict(CAUSAL=causal, FP32_DOT=use_fp32_dot(_bwd_dq_kernel, q_TNH.dtype),
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    strides_qkv_do = (
        q_TNH.stride(0), q_TNH.stride(1), k_TNH.stride(0), k_TNH.stride(1),
        v_TNH.stride(0), v_TNH.stride(1), dout_TNH.stride(0), dout_TNH.stride(1),
        lse_NT.stride(0),
    )
    if total_k > 0 and num_seg > 0 and max_seqlen_k > 0:
        _bwd_dkdv_kernel[(triton.cdiv(max_seqlen_k, block_n), num_seg, nheads)](
            q_TNH, k_TNH, v_TNH, dout_TNH, lse_NT, delta_NT, dk_TNH, dv_TNH,
            cu_seqlens_q, cu_seqlens_k,
            softmax_scale,
            *strides_qkv_do,
            dk_TNH.stride(0), dk_TNH.stride(1), dv_TNH.stride(0), dv_TNH.stride(1),
            headdim, group,
            **common,
        )
    if total_q > 0 and num_seg > 0 and max_seqlen_q > 0:
        _bwd_dq_kernel[(triton.cdiv(max_seqlen_q, block_m), num_seg, nheads)](
            q_TNH, k_TNH, v_TNH, dout_TNH, lse_NT, delta_NT, dq_TNH,
            cu_seqlens_q, cu_seqlens_k,
            softmax_scale,
            *strides_qkv_do,
            dq_TNH.stride(0), dq_TNH.stride(1),
            headdim, group,
            **common,
        )
    if group > 1:
        # GQA: the q heads of one group are adjacent (head // group), so sum over them.
        dk_TNH = dk_TNH.view(total_k, nheads_k, group, headdim).sum(2)
        dv_TNH = dv_TNH.view(total_k, nheads_k, group, headdim).sum(2)
    return dq_TNH.to(q_TNH.dtype), dk_TNH.to(k_TNH.dtype), dv_TNH.to(v_TNH.dtype)
