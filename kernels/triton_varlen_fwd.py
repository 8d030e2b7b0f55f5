"""Triton varlen attention, forward kernel (FlashAttention-2 style).

References: Tri Dao, "FlashAttention-2: Faster Attention with Better Parallelism and
Work Partitioning" (2023), Algorithm 1; the Triton fused-attention tutorial
(triton-lang.org, 06-fused-attention). Written for packed varlen segments here.

Imported only when the Triton backend actually runs: importing this module imports
triton, and `@triton.jit` reads TRITON_INTERPRET at decoration time, so the env var must
be set before the first import of this module.

Legend: T = total tokens (all segments), N = heads, H = head dim, S = segments,
M = rows of a q block, B = columns of a k block, D = head dim padded to a power of 2.
"""

import math

import torch
import triton
import triton.language as tl


def block_sizes(headdim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D). tl.dot needs every dim >= 16; D is padded with masks."""
    block_d = max(16, triton.next_power_of_2(headdim))
    # Smaller tiles for big heads keep the fp32 accumulators within registers on GPU.
    block = 64 if block_d <= 64 else 32
    return block, block, block_d


@triton.jit
def dot(a, b, FP32_DOT: tl.constexpr):
    """tl.dot with fp32 accumulation; FP32_DOT multiplies in exact fp32 instead.

    FP32_DOT is set for fp32 inputs (GPU default would be tf32, 10-bit mantissa) and for
    bf16 under the interpreter, whose tl.dot multiplies bf16's raw uint16 bits (triton
    3.9). Upcasting bf16 is exact, so results match bf16 x bf16 -> fp32 on a GPU.
    """
    if FP32_DOT:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def segment_bounds(CU_Q, CU_K, seg):
    """(q_start, len_q, k_start, len_k) of attention segment `seg`."""
    q_start = tl.load(CU_Q + seg)
    k_start = tl.load(CU_K + seg)
    return q_start, tl.load(CU_Q + seg + 1) - q_start, k_start, tl.load(CU_K + seg + 1) - k_start


@triton.jit
def load_rows(BASE, rows, stride_t, offs_d, mask):
    """The [rows, D] tile at BASE (a head's first element) with row stride stride_t; 0 where masked."""
    return tl.load(BASE + rows[:, None] * stride_t + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def key_end(pid_m, len_k, diag, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """One past the last key any row of q block pid_m sees: len_k, or less under bottom-right
    causal alignment (query i sees key j iff j <= i + diag)."""
    end = len_k
    if CAUSAL:
        end = tl.minimum(len_k, tl.maximum((pid_m + 1) * BLOCK_M + diag, 0))
    return end


@triton.jit
def load_kv(k_base, v_base, cols, len_k, stride_kt, stride_vt, offs_d, mask_d):
    """The k and v tiles of key columns `cols` (0 past len_k), and which columns are real."""
    mask_n = cols < len_k
    kv_mask = mask_n[:, None] & mask_d[None, :]
    return load_rows(k_base, cols, stride_kt, offs_d, kv_mask), load_rows(v_base, cols, stride_vt, offs_d, kv_mask), mask_n


@triton.jit
def recompute_p(q, k, lse, qk_scale, valid, FP32_DOT: tl.constexpr):
    """The softmax probabilities of a (q block, k block) pair from the forward's lse (backward)."""
    s = dot(q, tl.trans(k), FP32_DOT) * qk_scale
    p = tl.exp2(s - lse[:, None] * 1.4426950408889634)
    return tl.where(valid, p, 0.0)


def use_fp32_dot(kernel, dtype: torch.dtype) -> bool:
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    return dtype == torch.float32 or (interpreted and dtype == torch.bfloat16)


@triton.jit
def fwd_kernel(
    Q, K, V, O, LSE,
    CU_Q, CU_K,
    sm_scale,
    stride_qt, stride_qn, stride_kt, stride_kn, stride_vt, stride_vn,
    stride_ot, stride_on, stride_ln,
    headdim, group,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    seg = tl.program_id(1)
    head = tl.program_id(2)
    head_k = head // group  # GQA: `group` q heads share one kv head

    q_start, len_q, k_start, len_k = segment_bounds(CU_Q, CU_K, seg)
    # The grid covers max_seqlen_q; shorter segments leave idle programs.
    if pid_m * BLOCK_M < len_q:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < len_q
        mask_d = offs_d < headdim

        qo_mask = mask_m[:, None] & mask_d[None, :]
        q = load_rows(Q + head * stride_qn, q_start + offs_m, stride_qt, offs_d, qo_mask)
        k_base = K + k_start * stride_kt + head_k * stride_kn
        v_base = V + k_start * stride_vt + head_k * stride_vn

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634  # log2(e), scores live in the exp2 domain

        # Bottom-right causal: query i sees key j iff j <= i + (len_k - len_q).
        diag = len_k - len_q
        for start_n in range(0, key_end(pid_m, len_k, diag, CAUSAL, BLOCK_M), BLOCK_N):
            cols = start_n + offs_n
            k, v, mask_n = load_kv(k_base, v_base, cols, len_k, stride_kt, stride_vt, offs_d, mask_d)

            s = dot(q, tl.trans(k), FP32_DOT) * qk_scale
            valid = mask_n[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(valid, s, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with no visible key yet has m_new = -inf; shift by 0 instead so that
            # exp2(-inf - (-inf)) never produces NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, FP32_DOT)
            m_i = m_new

        # Rows that saw no key (empty k segment, or causal rows above the diagonal) output
        # zeros and lse = +inf, so the backward's exp(s - lse) is exactly 0 for them.
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)

        o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + head * stride_on + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=qo_mask)
        tl.store(LSE + head * stride_ln + q_start + offs_m, lse, mask=mask_m)


def varlen_fwd(
    q_TNH: torch.Tensor,
    k_TNH: torch.Tensor,
    v_TNH: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Returns (out_TNH in q's dtype, lse_NT fp32, natural log)."""
    total_q, nheads, headdim = q_TNH.shape
    nheads_k = k_TNH.shape[1]
    num_seg = cu_seqlens_q.numel() - 1
    # zeros/+inf, not empty: rows outside every segment (cu_seqlens[-1] < T) stay defined.
    out_TNH = torch.zeros_like(q_TNH)
    lse_NT = torch.full((nheads, total_q), math.inf, dtype=torch.float32, device=q_TNH.device)
    if total_q == 0 or num_seg == 0 or max_seqlen_q == 0:
        return out_TNH, lse_NT
    block_m, block_n, block_d = block_sizes(headdim)
    grid = (triton.cdiv(max_seqlen_q, block_m), num_seg, nheads)
    fwd_kernel[grid](
        q_TNH, k_TNH, v_TNH, out_TNH, lse_NT,
        cu_seqlens_q, cu_seqlens_k,
        softmax_scale,
        q_TNH.stride(0), q_TNH.stride(1), k_TNH.stride(0), k_TNH.stride(1),
        v_TNH.stride(0), v_TNH.stride(1), out_TNH.stride(0), out_TNH.stride(1),
        lse_NT.stride(0),
        headdim, nheads // nheads_k,
        CAUSAL=causal, FP32_DOT=use_fp32_dot(fwd_kernel, q_TNH.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out_TNH, lse_NT
