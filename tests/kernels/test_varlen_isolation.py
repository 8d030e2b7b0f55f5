"""Segment isolation and determinism: tokens of segment j never reach segment i.

(a) NaN-poison one segment's k/v (xformers fmha style): every other segment stays finite and
    unchanged (reference, cpu). (b) Perturb one segment: no other segment's output or gradient
    moves, bitwise for reference and cpu (no op reduces across segments), to tolerance for flex.
"""

import pytest
import torch

from patchpack.kernels import varlen_attention
from patchpack.kernels.testing import random_varlen_inputs

# a tiny segment (batched with padding in the cpu backend), a repeated length (one batched call),
# an empty k segment, a long segment: every cpu code path shares a call with the poisoned one
LENGTHS_Q = [3, 40, 1, 40, 2, 57, 4]
LENGTHS_K = [5, 40, 2, 40, 0, 31, 4]
POISONED = 3  # shares its (40, 40) bucket with segment 1


def _rows(cu, s):
    return slice(int(cu[s]), int(cu[s + 1]))


def _inputs():
    return random_varlen_inputs(LENGTHS_Q, LENGTHS_K, nheads=4, nheads_k=2, headdim=40,
                                dtype=torch.float32)


def _fwd_bwd(x, q, k, v, causal, backend, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = varlen_attention(q, k, v, x.cu_seqlens_q, x.cu_seqlens_k, x.max_seqlen_q,
                           x.max_seqlen_k, causal=causal, backend=backend)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _others_q(x):
    return torch.cat([
        torch.arange(int(x.cu_seqlens_q[s]), int(x.cu_seqlens_q[s + 1]))
        for s in range(len(LENGTHS_Q)) if s != POISONED
    ])


def _others_k(x):
    return torch.cat([
        torch.arange(int(x.cu_seqlens_k[s]), int(x.cu_seqlens_k[s + 1]))
        for s in range(len(LENGTHS_K)) if s != POISONED
    ])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nan_in_one_segment_stays_there(backend, causal):
    x = _inputs()
    dout = torch.randn(x.q.shape, generator=torch.Generator().manual_seed(3))
    clean = _fwd_bwd(x, x.q, x.k, x.v, causal, backend, dout)
    k, v = x.k.clone(), x.v.clone()
    k[_rows(x.cu_seqlens_k, POISONED)] = float("nan")
    v[_rows(x.cu_seqlens_k, POISONED)] = float("nan")
    poisoned = _fwd_bwd(x, x.q, k, v, causal, backend, dout)
    rows_q, rows_k = _others_q(x), _others_k(x)
    out_p, dq_p, dk_p, dv_p = poisoned
    assert torch.isnan(out_p[_rows(x.cu_seqlens_q, POISONED)]).all()  # guard: poison took effect
    for name, a, b, rows in zip(("out", "dq", "dk", "dv"), clean, poisoned,
                                (rows_q, rows_q, rows_k, rows_k), strict=True):
        assert torch.isfinite(b[rows]).all(), name
        assert torch.equal(a[rows], b[rows]), name


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_perturbing_one_segment_moves_nothing_else(backend, causal):
    x = _inputs()
    dout = torch.randn(x.q.shape, generator=torch.Generator().manual_seed(4))
    clean = _fwd_bwd(x, x.q, x.k, x.v, causal, backend, dout)
    q, k, v = x.q.clone(), x.k.clone(), x.v.clone()
    q[_rows(x.cu_seqlens_q, POISONED)] += 1.0
    k[_rows(x.cu_seqlens_k, POISONED)] *= -2.0
    v[_rows(x.cu_seqlens_k, POISONED)] += 3.0
    moved = _fwd_bwd(x, q, k, v, causal, backend, dout)
    rows_q, rows_k = _others_q(x), _others_k(x)
    own = _rows(x.cu_seqlens_q, POISONED)
    assert not torch.equal(clean[0][own], moved[0][own])  # guard against a vacuous pass
    for name, a, b, rows in zip(("out", "dq", "dk", "dv"), clean, moved,
                                (rows_q, rows_q, rows_k, rows_k), strict=True):
        assert torch.equal(a[rows], b[rows]), name


def test_flex_forward_isolation():
    """Finite perturbation only: flex's score matmul covers whole blocks, so a NaN in a masked
    key still reaches other segments through 0 * NaN (documented in kernels/flex.py)."""
    x = _inputs()
    args = (x.cu_seqlens_q, x.cu_seqlens_k, x.max_seqlen_q, x.max_seqlen_k)
    clean = varlen_attention(x.q, x.k, x.v, *args, causal=True, backend="flex")
    k, v = x.k.clone(), x.v.clone()
    k[_rows(x.cu_seqlens_k, POISONED)] *= -50.0
    v[_rows(x.cu_seqlens_k, POISONED)] += 1e3
    moved = varlen_attention(x.q, k, v, *args, causal=True, backend="flex")
    rows_q, own = _others_q(x), _rows(x.cu_seqlens_q, POISONED)
    assert not torch.allclose(moved[own], clean[own])  # guard against a vacuous pass
    torch.testing.assert_close(moved[rows_q], clean[rows_q])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_two_runs_are_bitwise_equal(backend):
    x = _inputs()
    dout = torch.randn(x.q.shape, generator=torch.Generator().manual_seed(5))
    first = _fwd_bwd(x, x.q, x.k, x.v, True, backend, dout)
    second = _fwd_bwd(x, x.q, x.k, x.v, True, backend, dout)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
