"""Test utilities for varlen attention, shipped so every backend's tests (ours, Triton's, the
model's) build inputs and judge accuracy the same way.

Mirrors flash-attention's tests (Dao-AILab/flash-attention, tests/test_util.py): random varlen
inputs from segment lengths, a padded dense `attention_ref` over [B, L, heads, H] to cross-check the
unpadded path, and the relative tolerance rule: a kernel's error against a float64 reference may be
at most `factor` x the error of the same math done by the reference in the kernel's input dtype
(2x for outputs, 3x for gradients), plus a small floor relative to the output's magnitude.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim, S segments,
S1 = S + 1, B padded batch (= S), L padded length.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .reference import causal_mask, reference_varlen_attention


def cu_seqlens_from_lengths(lengths: Sequence[int], device="cpu") -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


@dataclass
class VarlenInputs:
    q: torch.Tensor  # [T, N, H]
    k: torch.Tensor  # [U, G, H]
    v: torch.Tensor  # [U, G, H]
    cu_seqlens_q: torch.Tensor  # [S1] int32
    cu_seqlens_k: torch.Tensor  # [S1] int32
    max_seqlen_q: int
    max_seqlen_k: int

    def args(self):
        """Positional arguments of `varlen_attention`."""
        return (self.q, self.k, self.v, self.cu_seqlens_q, self.cu_seqlens_k,
                self.max_seqlen_q, self.max_seqlen_k)

    def cast(self, dtype: torch.dtype, requires_grad: bool = False) -> VarlenInputs:
        """Same values in another dtype, as fresh leaves."""
        q, k, v = (x.detach().to(dtype).requires_grad_(requires_grad) for x in (self.q, self.k, self.v))
        return VarlenInputs(q, k, v, self.cu_seqlens_q, self.cu_seqlens_k,
                            self.max_seqlen_q, self.max_seqlen_k)


def random_varlen_inputs(
    lengths_q: Sequence[int],
    lengths_k: Sequence[int] | None = None,
    nheads: int = 4,
    nheads_k: int | None = None,
    headdim: int = 32,
    dtype: torch.dtype = torch.float64,
    device="cpu",
    seed: int = 0,
) -> VarlenInputs:
    """Standard-normal q/k/v for the given segment lengths (lengths_k defaults to lengths_q:
    self-attention). Generated in float64 so that `.cast` gives every dtype the same values."""
    lengths_k = lengths_q if lengths_k is None else lengths_k
    if len(lengths_q) != len(lengths_k):
        raise ValueError(f"{len(lengths_q)} q segments but {len(lengths_k)} k segments")
    nheads_k = nheads if nheads_k is None else nheads_k
    gen = torch.Generator().manual_seed(seed)
    total_q, total_k = sum(lengths_q), sum(lengths_k)
    q = torch.randn(total_q, nheads, headdim, generator=gen, dtype=torch.float64)
    k = torch.randn(total_k, nheads_k, headdim, generator=gen, dtype=torch.float64)
    v = torch.randn(total_k, nheads_k, headdim, generator=gen, dtype=torch.float64)
    q, k, v = (x.to(device=device, dtype=dtype) for x in (q, k, v))
    return VarlenInputs(
        q, k, v,
        cu_seqlens_from_lengths(lengths_q, device), cu_seqlens_from_lengths(lengths_k, device),
        max(lengths_q, default=0), max(lengths_k, default=0),
    )


# ---- padded dense path (flash-attention's pad_input / unpad_input / attention_ref) ----

def pad_varlen(x_TNH: torch.Tensor, cu_S1: torch.Tensor, pad_len: int):
    """[T, N, H] -> zero-padded [B, L, N, H] and the validity mask [B, L]."""
    lengths_B = (cu_S1[1:] - cu_S1[:-1]).long()
    valid_BL = torch.arange(pad_len)[None, :] < lengths_B[:, None]
    x_BLNH = x_TNH.new_zeros(len(lengths_B), pad_len, *x_TNH.shape[1:])
    x_BLNH[valid_BL] = x_TNH
    return x_BLNH, valid_BL


def unpad_varlen(x_BLNH: torch.Tensor, valid_BL: torch.Tensor) -> torch.Tensor:
    return x_BLNH[valid_BL]


def padded_attention_ref(q_BLNH, k_BLGH, v_BLGH, valid_q_BL, valid_k_BL, causal=False, scale=None):
    """Dense attention over a padded batch with key-padding and bottom-right causal masks; rows
    without any allowed key give 0. An independent second opinion on `reference_varlen_attention`."""
    group = q_BLNH.shape[2] // k_BLGH.shape[2]
    k_BLNH, v_BLNH = (x.repeat_interleave(group, dim=2) for x in (k_BLGH, v_BLGH))
    scale = scale if scale is not None else q_BLNH.shape[-1] ** -0.5
    scores_BNLL = torch.einsum("bqnh,bknh->bnqk", q_BLNH * scale, k_BLNH)
    allowed_BLL = valid_q_BL[:, :, None] & valid_k_BL[:, None, :]
    if causal:
        len_q_B, len_k_B = valid_q_BL.sum(1), valid_k_BL.sum(1)
        i_1L1 = torch.arange(q_BLNH.shape[1])[None, :, None]
        j_11L = torch.arange(k_BLNH.shape[1])[None, None, :]
        allowed_BLL = allowed_BLL & (j_11L <= i_1L1 + (len_k_B - len_q_B)[:, None, None])
    allowed_B1LL = allowed_BLL[:, None]
    scores_BNLL = scores_BNLL.masked_fill(~allowed_B1LL, torch.finfo(scores_BNLL.dtype).min)
    probs_BNLL = torch.softmax(scores_BNLL, dim=-1) * allowed_B1LL
    return torch.einsum("bnqk,bknh->bqnh", probs_BNLL, v_BLNH)


# ---- the relative tolerance rule ----

def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0


def assert_parity(
    actual: torch.Tensor,
    truth: torch.Tensor,
    baseline: torch.Tensor,
    factor: float = 2.0,
    floor: float = 1e-5,
    what: str = "out",
) -> None:
    """|actual - truth| <= factor * |baseline - truth| + floor * max(1, |truth|), in max norm.

    truth: float64 reference. baseline: the reference run in the kernel's input dtype (no upcast):
    the error any correct kernel in that precision is expected to make.
    """
    err = max_abs_error(actual, truth)
    base = max_abs_error(baseline, truth)
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    bound = factor * base + floor * scale
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values in the kernel's result")
    if err > bound:
        raise AssertionError(
            f"{what}: max error {err:.3e} > {factor} x baseline error {base:.3e} + floor "
            f"{floor * scale:.3e} (= {bound:.3e})"
        )


def _grads(out, dout, inputs):
    return torch.autograd.grad(out, (inputs.q, inputs.k, inputs.v), dout)


def check_backend_parity(
    run,
    inputs: VarlenInputs,
    dtype: torch.dtype,
    causal: bool = False,
    backward: bool = True,
    seed: int = 1,
) -> None:
    """Judge `run(VarlenInputs, causal) -> out` (inputs cast to `dtype`) by the relative rule
    against float64 `reference_varlen_attention`; also dq/dk/dv (3x) when backward."""
    truth_in = inputs.cast(torch.float64, requires_grad=backward)
    base_in = inputs.cast(dtype, requires_grad=backward)
    test_in = inputs.cast(dtype, requires_grad=backward)
    truth = reference_varlen_attention(*truth_in.args()[:5], causal=causal)
    baseline = reference_varlen_attention(*base_in.args()[:5], causal=causal, upcast=False)
    out = run(test_in, causal)
    assert out.shape == truth.shape and out.dtype == dtype, (out.shape, out.dtype)
    assert_parity(out, truth, baseline, 2.0, what="out")
    if not backward:
        return
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(truth.shape, generator=gen, dtype=torch.float64).to(truth.device)
    g_truth = _grads(truth, dout, truth_in)
    g_base = _grads(baseline, dout.to(dtype), base_in)
    g_out = _grads(out, dout.to(dtype), test_in)
    for name, a, t, b in zip(("dq", "dk", "dv"), g_out, g_truth, g_base, strict=True):
        assert_parity(a, t, b, 3.0, what=name)


__all__ = [
    "VarlenInputs", "assert_parity", "causal_mask", "check_backend_parity",
    "cu_seqlens_from_lengths", "max_abs_error", "pad_varlen", "padded_attention_ref",
    "random_varlen_inputs", "unpad_varlen",
]
