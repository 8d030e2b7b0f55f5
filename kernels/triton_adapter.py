"""Dispatch entry for our own Triton FlashAttention-2-style kernel in `triton_varlen.py`.

That module owns its kernel and its own `not_supported_reasons(q, k, v, causal, needs_grad)`
(e.g. "triton not installed", "CPU tensors need TRITON_INTERPRET=1"); this adapter only imports it
lazily and reports an import failure as a reason instead of hiding it.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S1 = segments + 1.
"""

from __future__ import annotations

import importlib

import torch

from .backend import Backend, Capabilities

_MODULE = "patchpack.kernels.triton_varlen"


def _load():
    """(module, None) or (None, reason)."""
    try:
        return importlib.import_module(_MODULE), None
    except ImportError as e:
        return None, f"{_MODULE} not importable: {e}"


def _extra_reasons(q, k, v, causal, needs_grad):
    module, reason = _load()
    if module is None:
        return [reason]
    return list(module.not_supported_reasons(q, k, v, causal, needs_grad))


def _run(q_TNH, k_UGH, v_UGH, cu_q_S1, cu_k_S1, max_q, max_k, softmax_scale, causal, **extra):
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module.triton_varlen_attention(
        q_TNH, k_UGH, v_UGH, cu_q_S1, cu_k_S1, max_q, max_k, softmax_scale, causal
    )


# Deliberately permissive: the kernel module states its own limits through its reasons.
CAPS = Capabilities(
    name="triton",
    devices=("cuda", "cpu"),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    backward_devices=("cuda", "cpu"),
    auto_devices=("cuda",),  # on CPU it needs the (slow) interpreter: explicit use only
)
BACKEND = Backend(caps=CAPS, run=_run, extra_reasons=_extra_reasons)
