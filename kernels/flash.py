"""flash-attention 2's `flash_attn_varlen_func` (Dao-AILab/flash-attention), imported lazily.

Our public API copies its layout, argument names and causal convention, so this adapter passes the
arguments straight through. Zero-length segments and bottom-right causal are handled in the kernel.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S1 = segments + 1.
"""

from __future__ import annotations

import importlib.util

import torch

from .backend import Backend, Capabilities


def _import_error() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn not installed (pip install flash-attn)"
    return None


def _extra_reasons(q, k, v, causal, needs_grad):
    reason = _import_error()
    return [reason] if reason else []


def _run(q_TNH, k_UGH, v_UGH, cu_q_S1, cu_k_S1, max_q, max_k, softmax_scale, causal, **extra):
    from flash_attn import flash_attn_varlen_func  # lazy: importing initialises CUDA

    return flash_attn_varlen_func(
        q_TNH, k_UGH, v_UGH, cu_q_S1, cu_k_S1, max_q, max_k,
        dropout_p=0.0, softmax_scale=softmax_scale, causal=causal,
    )


CAPS = Capabilities(
    name="flash",
    devices=("cuda",),
    dtypes=(torch.float16, torch.bfloat16),
    max_headdim=256,
    backward_devices=("cuda",),
)
BACKEND = Backend(caps=CAPS, run=_run, extra_reasons=_extra_reasons)
