"""patchpack.kernels: varlen (packed) attention with interchangeable backends.

    from patchpack.kernels import varlen_attention, explain
    out = varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

Backends: reference, cpu, flex, flash, xformers, triton; see `python -m patchpack.kernels.info`.
"""

from .backend import Backend, Capabilities
from .dispatch import (
    AUTO_ORDER,
    BACKENDS,
    BackendUnavailableError,
    Selection,
    explain,
    select_backend,
)
from .flex import FlexMaskCache, VarlenBlockMask, make_block_mask
from .reference import reference_varlen_attention
from .validate import validate_varlen_inputs
from .varlen import varlen_attention

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "Capabilities",
    "FlexMaskCache",
    "Selection",
    "VarlenBlockMask",
    "explain",
    "make_block_mask",
    "reference_varlen_attention",
    "select_backend",
    "validate_varlen_inputs",
    "varlen_attention",
]
