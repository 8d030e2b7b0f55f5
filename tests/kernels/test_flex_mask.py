"""The flex BlockMask is built once per packed batch and reused across layers."""

import pytest
import torch

from patchpack.kernels import FlexMaskCache, make_block_mask, varlen_attention
from patchpack.kernels.testing import random_varlen_inputs


def test_cache_hits_for_the_same_cu_seqlens_objects_only():
    x = random_varlen_inputs([4, 9], dtype=torch.float32)
    cache = FlexMaskCache()
    first = cache.get(x.cu_seqlens_q, x.cu_seqlens_k, 13, 13, False)
    assert cache.get(x.cu_seqlens_q, x.cu_seqlens_k, 13, 13, False) is first  # next layer
    assert cache.builds == 1
    cache.get(x.cu_seqlens_q.clone(), x.cu_seqlens_k, 13, 13, False)  # equal values, new object
    assert cache.builds == 2
    cu_q = x.cu_seqlens_q.clone()
    cache.get(cu_q, x.cu_seqlens_k, 13, 13, False)
    cu_q[1] = 5  # modified in place: version counter moves
    cu_q[1] = 4
    cache.get(cu_q, x.cu_seqlens_k, 13, 13, False)
    assert cache.builds == 4


def test_explicit_block_mask_is_used_and_checked():
    x = random_varlen_inputs([4, 9], [6, 2], nheads=2, headdim=16, dtype=torch.float32)
    mask = make_block_mask(x.cu_seqlens_q, x.cu_seqlens_k, 13, 8, causal=True)
    out = varlen_attention(*x.args(), causal=True, backend="flex", block_mask=mask)
    ref = varlen_attention(*x.args(), causal=True, backend="reference")
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="causal=True"):
        varlen_attention(*x.args(), causal=False, backend="flex", block_mask=mask)
