"""Each CPU-runnable backend against the float64 reference, by flash-attention's relative rule.

Odd sizes on purpose (head dims 40/59/72, lengths 1 and 113), and the layouts packed batches
really contain: single segment, many tiny segments, zero-length (padding) segments, cross-attention
with a different k segmentation, GQA.
"""

import random

import pytest
import torch

from patchpack.kernels import varlen_attention
from patchpack.kernels.reference import reference_varlen_attention
from patchpack.kernels.testing import (
    check_backend_parity,
    pad_varlen,
    padded_attention_ref,
    random_varlen_inputs,
    unpad_varlen,
)

_rng = random.Random(0)
TINY_200 = [_rng.randint(1, 3) for _ in range(200)]  # few shapes: unpadded batched calls
CROSS_TINY_Q = [_rng.randint(0, 5) for _ in range(60)]  # many (len_q, len_k) shapes: padded call
CROSS_TINY_K = [_rng.randint(0, 7) for _ in range(60)]

# id -> (lengths_q, lengths_k or None for self-attention, nheads, nheads_k, headdim)
CASES = {
    "single_113_d59": ([113], None, 3, 3, 59),
    "mixed_d40": ([1, 113, 17, 64, 33], None, 4, 4, 40),
    "tiny_200": (TINY_200, None, 2, 2, 40),
    "zero_len_d72": ([0, 9, 0, 41, 0], None, 2, 2, 72),
    "cross_d59": ([7, 113, 1, 30], [5, 11, 8, 1], 4, 4, 59),
    "cross_empty_k": ([4, 6, 3], [0, 37, 2], 2, 2, 40),
    "cross_tiny": (CROSS_TINY_Q, CROSS_TINY_K, 4, 2, 40),
    "equal_runs": ([37, 37, 37, 37, 5, 5, 5, 5, 2, 37], None, 3, 3, 40),  # views, not gathers
    "gqa_8_2": ([1, 113, 40, 40, 3], None, 8, 2, 40),
    "cross_gqa_longer_q": ([50, 2, 33], [9, 40, 33], 8, 2, 72),
}


def _run_backend(backend):
    def run(inputs, causal):
        return varlen_attention(*inputs.args(), causal=causal, backend=backend)

    return run


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_backend_matches_reference(case, causal, dtype):
    lengths_q, lengths_k, nheads, nheads_k, headdim = CASES[case]
    inputs = random_varlen_inputs(lengths_q, lengths_k, nheads, nheads_k, headdim)
    check_backend_parity(_run_backend("cpu"), inputs, dtype, causal=causal, backward=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cpu_backend_float16(causal):
    inputs = random_varlen_inputs([1, 113, 0, 29], [3, 80, 4, 29], 4, 2, 59)
    check_backend_parity(_run_backend("cpu"), inputs, torch.float16, causal=causal)


@pytest.mark.parametrize("case", ["mixed_d40", "cross_gqa_longer_q", "zero_len_d72"])
def test_reference_backend_through_dispatch(case):
    lengths_q, lengths_k, nheads, nheads_k, headdim = CASES[case]
    inputs = random_varlen_inputs(lengths_q, lengths_k, nheads, nheads_k, headdim)
    check_backend_parity(_run_backend("reference"), inputs, torch.bfloat16, causal=True)


# Eager FlexAttention on CPU costs ~0.3 s per call and has no backward: forward only, few cases.
@pytest.mark.parametrize(
    "case,causal",
    [("mixed_d40", False), ("cross_gqa_longer_q", True), ("cross_empty_k", False)],
)
def test_flex_forward_matches_reference(case, causal):
    lengths_q, lengths_k, nheads, nheads_k, headdim = CASES[case]
    inputs = random_varlen_inputs(lengths_q, lengths_k, nheads, nheads_k, headdim)
    check_backend_parity(_run_backend("flex"), inputs, torch.float32, causal=causal, backward=False)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reference_matches_padded_dense_attention(causal):
    """Two independent formulations of the same math: unpadded loop vs padded batch with masks."""
    lengths_q, lengths_k = [5, 1, 0, 113, 12], [9, 1, 3, 60, 0]
    x = random_varlen_inputs(lengths_q, lengths_k, nheads=4, nheads_k=2, headdim=59)
    out_TNH = reference_varlen_attention(*x.args()[:5], causal=causal)
    q_BLNH, valid_q_BL = pad_varlen(x.q, x.cu_seqlens_q, x.max_seqlen_q)
    k_BLGH, valid_k_BL = pad_varlen(x.k, x.cu_seqlens_k, x.max_seqlen_k)
    v_BLGH, _ = pad_varlen(x.v, x.cu_seqlens_k, x.max_seqlen_k)
    dense_BLNH = padded_attention_ref(q_BLNH, k_BLGH, v_BLGH, valid_q_BL, valid_k_BL, causal)
    torch.testing.assert_close(out_TNH, unpad_varlen(dense_BLNH, valid_q_BL))


def test_causal_is_bottom_right_aligned():
    """seqlen_q=2, seqlen_k=5: row 0 sees keys 0..3, row 1 sees all (the docstring picture)."""
    x = random_varlen_inputs([2], [5], nheads=1, headdim=8, dtype=torch.float32)
    v = torch.eye(5, 8)[:, None, :]  # value j = one-hot j: out = probs
    k = torch.zeros_like(x.k)  # equal scores: uniform over the allowed keys
    out = varlen_attention(x.q, k, v, x.cu_seqlens_q, x.cu_seqlens_k, 2, 5,
                          causal=True, backend="reference")
    probs = out[:, 0, :5]
    torch.testing.assert_close(probs[0], torch.tensor([0.25] * 4 + [0.0]))
    torch.testing.assert_close(probs[1], torch.full((5,), 0.2))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_rows_without_keys_are_zero_with_zero_grads(backend):
    """Empty k segment, and causal seqlen_q > seqlen_k: those q rows output 0 and get 0 grad."""
    x = random_varlen_inputs([3, 5], [0, 2], nheads=2, headdim=40, dtype=torch.float32)
    q = x.q.clone().requires_grad_()
    out = varlen_attention(q, x.k, x.v, x.cu_seqlens_q, x.cu_seqlens_k, 5, 2,
                           causal=True, backend=backend)
    out.sum().backward()
    dead = [0, 1, 2, 3, 4, 5]  # segment 0 entirely, and the first 5 - 2 = 3 rows of segment 1
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))
    assert torch.equal(q.grad[dead], torch.zeros_like(q.grad[dead]))
    assert out[6:].abs().sum() > 0
