"""Our own FlashAttention-2-style varlen attention in Triton: forward and backward.

References: Tri Dao, "FlashAttention-2: Faster Attention with Better Parallelism and
Work Partitioning" (2023); the Triton fused-attention tutorial (triton-lang.org,
06-fused-attention); the layering of Dao-AILab/flash-attention's
`flash_attn_varlen_func`. The kernels live in `triton_varlen_fwd` / `triton_varlen_bwd`.

Layers, as in flash-attention:
  1. raw ops `patchpack::triton_varlen_fwd` / `patchpack::triton_varlen_bwd`
     (`torch.library.custom_op` + `register_fake`, so torch.compile can trace them);
  2. `register_autograd` on the forward op, whose backward calls the backward op;
  3. `triton_varlen_attention`, the thin public function.

Importing this module never imports triton: the `@triton.jit` kernels are imported on
the first call, and triton reads TRITON_INTERPRET when they are decorated. On CPU the
kernels run in the Triton interpreter, so set TRITON_INTERPRET=1 before that first call.

Legend: T = total tokens (all segments), N = heads, H = head dim, S = segments.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEADDIM = 256  # the fp32 accumulators of a 256-wide tile already fill a GPU's registers

_FWD_MODULE = __package__ + ".triton_varlen_fwd"
_BWD_MODULE = __package__ + ".triton_varlen_bwd"


# ------------------------------------------------------------------ capability checks
@functools.cache
def _triton_import_error() -> str | None:
    """None if triton imports, else the ImportError message. Imports triton (not the GPU)."""
    if importlib.util.find_spec("triton") is None:
        return "No module named 'triton'"
    try:
        import triton  # noqa: F401
    except ImportError as e:  # broken install, e.g. a missing shared library
        return str(e)
    return None


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels_interpreted() -> bool | None:
    """How already-imported kernels were decorated (None if not imported yet).

    `@triton.jit` picks interpreter vs compiler once, at import, so a later change of
    TRITON_INTERPRET has no effect on them.
    """
    mod = sys.modules.get(_FWD_MODULE)
    if mod is None:
        return None
    return type(mod.fwd_kernel).__name__ == "InterpretedFunction"


def not_supported_reasons(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, needs_grad: bool
) -> list[str]:
    """Readable reasons why `triton_varlen_attention` cannot run these inputs ([] if it can).

    `causal` and `needs_grad` are accepted for the dispatcher's uniform signature: both
    are supported, in every combination.
    """
    del causal, needs_grad
    reasons = []
    err = _triton_import_error()
    if err is not None:
        reasons.append(f"triton is not installed ({err})")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        reasons.append(
            f"q, k, v must be (total_tokens, nheads, headdim), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
        return reasons
    if q.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {q.dtype} is not supported (fp16, bf16, fp32)")
    if not (q.dtype == k.dtype == v.dtype):
        reasons.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        reasons.append(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    headdim = q.shape[-1]
    if headdim > MAX_HEADDIM:
        reasons.append(f"headdim {headdim} > {MAX_HEADDIM}")
    if k.shape[-1] != headdim or v.shape[-1] != headdim:
        reasons.append(f"head dims differ: q {headdim}, k {k.shape[-1]}, v {v.shape[-1]}")
    if k.shape[:2] != v.shape[:2]:
        reasons.append(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        reasons.append(f"nheads {q.shape[1]} is not a multiple of nheads_k {k.shape[1]}")

    interpreted = _kernels_interpreted()
    if q.device.type == "cpu":
        if interpreted is False:
            reasons.append(
                "kernels were imported without TRITON_INTERPRET=1 and cannot run on CPU "
                "in this process"
            )
        elif interpreted is None and not _interpret_env():
            reasons.append("CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)")
    elif q.device.type == "cuda":
        if interpreted is True:
            reasons.append(
                "kernels were imported under TRITON_INTERPRET=1 and cannot compile for CUDA "
                "in this process"
            )
        elif q.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            reasons.append("bf16 needs a GPU with compute capability >= 8.0")
    else:
        reasons.append(f"device {q.device.type} is not supported (cuda, or cpu interpreted)")
    return reasons


# ------------------------------------------------------------------ layer 1: raw ops
@torch.library.custom_op("patchpack::triton_varlen_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    fwd = importlib.import_module(_FWD_MODULE)
    # contiguous: the kernels assume a unit stride over headdim (a copy only if not).
    return fwd.varlen_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(),
        cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
        max_seqlen_q, softmax_scale, causal,
    )


@_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal):
    out_TNH = torch.empty_like(q)
    lse_NT = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out_TNH, lse_NT


@torch.library.custom_op("patchpack::triton_varlen_bwd", mutates_args=())
def _bwd_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bwd = importlib.import_module(_BWD_MODULE)
    return bwd.varlen_bwd(
        dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
        out.contiguous(), lse.contiguous(),
        cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
        max_seqlen_q, max_seqlen_k, softmax_scale, causal,
    )


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
      softmax_scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# ------------------------------------------------------------------ layer 2: autograd
# `register_autograd` rather than an autograd.Function: dynamo traces it with fullgraph
# and accepts k is v (autograd.Function.apply rejects duplicate tensor inputs).
def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal = inputs
    out_TNH, lse_NT = output
    # Saved: O and LSE (T*N fp32), not the T x T probabilities: backward recomputes them.
    ctx.save_for_backward(q, k, v, out_TNH, lse_NT, cu_seqlens_q, cu_seqlens_k)
    ctx.args = (max_seqlen_q, max_seqlen_k, softmax_scale, causal)


def _backward(ctx, dout_TNH, dlse_NT):
    # dlse_NT is ignored: lse is an auxiliary output for the backward, not differentiable.
    q, k, v, out_TNH, lse_NT, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dq, dk, dv = _bwd_op(dout_TNH, q, k, v, out_TNH, lse_NT, cu_seqlens_q, cu_seqlens_k,
                         *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ layer 3: public
def triton_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Varlen (packed) attention, FlashAttention-2 style, autograd-capable.

    Args:
        q: (total_q, nheads, headdim), fp16 / bf16 / fp32.
        k, v: (total_k, nheads_k, headdim), same dtype; nheads % nheads_k == 0 (GQA: q head
            h reads kv head h // (nheads // nheads_k)).
        cu_seqlens_q, cu_seqlens_k: int32 [S+1], cumulative segment starts; q segment i
            attends to k segment i only (self- or cross-attention). Zero-length segments
            are allowed; a q row whose k segment is empty outputs zeros.
        max_seqlen_q, max_seqlen_k: host ints >= every segment length (no device sync).
        softmax_scale: defaults to headdim ** -0.5.
        causal: flash-attn convention, aligned to the bottom-right corner when a segment's
            seqlen_q != seqlen_k. E.g. seqlen_q = 2, seqlen_k = 5 (1 = kept):
                1 1 1 1 0
                1 1 1 1 1
            and seqlen_q = 5, seqlen_k = 2 (rows with no key output zeros):
                0 0
                0 0
                0 0
                1 0
                1 1
    Returns:
        out: (total_q, nheads, headdim) in q's dtype (fp32 accumulation inside).
    """
    # Checked eagerly only: under torch.compile they would be traced into guards on every
    # call for nothing (the dispatcher has already asked not_supported_reasons).
    if not torch.compiler.is_compiling():
        reasons = not_supported_reasons(q, k, v, causal, needs_grad=torch.is_grad_enabled())
        if reasons:
            raise RuntimeError("triton varlen attention cannot run: " + "; ".join(reasons))
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1:
        raise ValueError(
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k "
            f"{tuple(cu_seqlens_k.shape)} must both be [S+1]"
        )
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise ValueError(
            f"cu_seqlens must be int32, got {cu_seqlens_q.dtype} and {cu_seqlens_k.dtype}"
        )
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    out_TNH, _ = _fwd_op(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
        float(softmax_scale), bool(causal),
    )
    return out_TNH
