"""Triton varlen attention vs an fp64 dense per-segment reference (CPU, Triton interpreter).

Tolerance follows flash-attn's rule: the kernel's error against fp64 may be at most 2x
(outputs) / 3x (grads) the error of the same dense math done in the input's low precision,
plus a small floor. The interpreter is slow, so default cases are tiny; the sweep is
behind `-m slow`.

Legend: T = total tokens (all segments), N = heads, H = head dim.
"""

import os

# Must precede the first import of triton: @triton.jit reads it at decoration time.
os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import patchpack.kernels.triton_varlen as tv  # noqa: E402
from patchpack.kernels.triton_varlen import (  # noqa: E402
    not_supported_reasons,
    triton_varlen_attention,
)


# ------------------------------------------------------------------ reference
def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def reference_attention(q_TNH, k_TNH, v_TNH, cu_q, cu_k, scale, causal, dtype=torch.float64):
    """Dense per-segment softmax attention in `dtype` (fp64: truth; fp16/bf16: the baseline)."""
    group = q_TNH.shape[1] // k_TNH.shape[1]
    outs = []
    for i in range(cu_q.numel() - 1):
        qs, qe, ks, ke = (int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1]))
        q_NMH = q_TNH[qs:qe].to(dtype).transpose(0, 1)
        k_NBH = k_TNH[ks:ke].to(dtype).repeat_interleave(group, 1).transpose(0, 1)
        v_NBH = v_TNH[ks:ke].to(dtype).repeat_interleave(group, 1).transpose(0, 1)
        s_NMB = (q_NMH @ k_NBH.transpose(-1, -2)) * scale
        if causal:
            lq, lk = qe - qs, ke - ks
            keep = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
            s_NMB = s_NMB.masked_fill(~keep, -math.inf)
        # Rows with no visible key: softmax gives NaN; flash-attn's convention is zeros.
        p_NMB = torch.softmax(s_NMB.float() if dtype != torch.float64 else s_NMB, -1)
        p_NMB = p_NMB.nan_to_num(0.0).to(dtype)
        outs.append((p_NMB @ v_NBH).transpose(0, 1))
    return torch.cat(outs) if outs else q_TNH.new_zeros(0, *q_TNH.shape[1:]).to(dtype)


def _make(lens_q, lens_k, nheads, nheads_k, headdim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(lens_q), sum(lens_k)
    q = torch.randn(tq, nheads, headdim, generator=g).to(dtype)
    k = torch.randn(tk, nheads_k, headdim, generator=g).to(dtype)
    v = torch.randn(tk, nheads_k, headdim, generator=g).to(dtype)
    return q, k, v, _cu(lens_q), _cu(lens_k)


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _check_parity(lens_q, lens_k, nheads=2, nheads_k=2, headdim=40, causal=False,
                  dtype=torch.float16, seed=0):
    q, k, v, cu_q, cu_k = _make(lens_q, lens_k, nheads, nheads_k, headdim, dtype, seed)
    scale = headdim ** -0.5
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)

    def kernel(q, k, v):
        return triton_varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                       softmax_scale=scale, causal=causal)

    def ref(dt):
        return lambda q, k, v: reference_attention(q, k, v, cu_q, cu_k, scale, causal, dt)

    got = _grads(kernel, q, k, v, dout)
    truth = _grads(ref(torch.float64), q, k, v, dout.double())
    # Low-precision baseline: the same dense math in the input dtype (fp32 for fp32 inputs).
    low = _grads(ref(dtype), q, k, v, dout)
    errs = []
    for name, g, t, lo, mult in zip("out dq dk dv".split(), got, truth, low, (2, 3, 3, 3)):
        assert g.dtype == dtype and g.shape == t.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        err = (g.double() - t).abs().max().item() if g.numel() else 0.0
        base = (lo.double() - t).abs().max().item() if g.numel() else 0.0
        floor = 1e-5 if dtype == torch.float32 else 1e-3
        assert err <= mult * base + floor, f"{name}: err {err:.3g} > {mult} x {base:.3g} + {floor}"
        errs.append(err)
    return errs


# ------------------------------------------------------------------ parity
CASES = [
    # (lens_q, lens_k, nheads, nheads_k, headdim, causal, dtype)
    pytest.param([37], [37], 2, 2, 40, False, torch.float16, id="single-d40"),
    pytest.param([37], [37], 2, 2, 40, True, torch.float16, id="single-d40-causal"),
    pytest.param([1, 0, 5, 3, 1], [1, 0, 5, 3, 1], 2, 2, 59, True, torch.float16,
                 id="tiny-segments-d59-causal"),
    pytest.param([113, 1, 7], [113, 1, 7], 1, 1, 16, False, torch.bfloat16, id="len113-bf16"),
    pytest.param([9, 4, 0, 6], [5, 0, 3, 11], 2, 2, 40, False, torch.float16,
                 id="cross-empty-k"),
    pytest.param([9, 4, 6], [5, 11, 2], 2, 2, 32, True, torch.float16,
                 id="cross-causal-bottom-right"),
    pytest.param([13, 20], [13, 20], 4, 2, 40, True, torch.float16, id="gqa-4-2"),
    pytest.param([13, 20], [7, 20], 4, 2, 59, False, torch.float32, id="gqa-fp32-d59"),
]


@pytest.mark.parametrize("lens_q,lens_k,nheads,nheads_k,headdim,causal,dtype", CASES)
def test_parity(lens_q, lens_k, nheads, nheads_k, headdim, causal, dtype):
    _check_parity(lens_q, lens_k, nheads, nheads_k, headdim, causal, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("headdim", [40, 59, 72, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_parity_sweep(headdim, causal, dtype):
    lens_q, lens_k = [113, 37, 1, 0, 70], [90, 37, 4, 2, 70]
    _check_parity(lens_q, lens_k, 4, 2, headdim, causal, dtype, seed=headdim)


# ------------------------------------------------------------------ edge cases
def test_empty_k_segment_outputs_zeros_and_zero_grads():
    q, k, v, cu_q, cu_k = _make([3, 4], [0, 5], 2, 2, 16, torch.float32)
    q.requires_grad_(True)
    out = triton_varlen_attention(q, k, v, cu_q, cu_k, 4, 5)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    out.sum().backward()
    assert torch.equal(q.grad[:3], torch.zeros_like(q.grad[:3]))


def test_nan_poison_does_not_leak_across_segments():
    lens = [6, 9, 5]
    q, k, v, cu_q, cu_k = _make(lens, lens, 2, 2, 24, torch.float16)
    for causal in (False, True):
        clean = triton_varlen_attention(q, k, v, cu_q, cu_k, 9, 9, causal=causal)
        k2, v2 = k.clone(), v.clone()
        k2[6:15] = float("nan")  # poison segment 1 only
        v2[6:15] = float("nan")
        dirty = triton_varlen_attention(q, k2, v2, cu_q, cu_k, 9, 9, causal=causal)
        others = torch.cat([torch.arange(0, 6), torch.arange(15, 20)])
        assert torch.equal(dirty[others], clean[others])
        assert torch.isnan(dirty[6:15]).all()  # guard: the poison was actually read


def test_cu_seqlens_validation():
    q, k, v, cu_q, cu_k = _make([4], [4], 1, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="int32"):
        triton_varlen_attention(q, k, v, cu_q.long(), cu_k, 4, 4)
    with pytest.raises(ValueError, match=r"\[S\+1\]"):
        triton_varlen_attention(q, k, v, cu_q, cu_k[:1], 4, 4)


# ------------------------------------------------------------------ reasons
def test_not_supported_reasons():
    q = torch.randn(4, 2, 16)
    assert not_supported_reasons(q, q, q, causal=True, needs_grad=True) == []
    big = torch.randn(4, 2, 300)
    assert any("headdim 300" in r for r in not_supported_reasons(big, big, big, False, False))
    qi = q.to(torch.float64)
    assert any("float64" in r for r in not_supported_reasons(qi, qi, qi, False, False))
    k3 = torch.randn(4, 3, 16)
    assert any("multiple" in r for r in not_supported_reasons(q, k3, k3, False, False))
    with pytest.raises(RuntimeError, match="headdim 300"):
        cu = _cu([4])
        triton_varlen_attention(big, big, big, cu, cu, 4, 4)


def test_not_supported_reasons_without_triton_or_interpreter(monkeypatch):
    # Simulated: in this process triton is installed and the kernels are already imported.
    monkeypatch.setattr(tv, "_triton_import_error", lambda: "No module named 'triton'")
    monkeypatch.setattr(tv, "_kernels_interpreted", lambda: None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(4, 2, 16)
    assert tv.not_supported_reasons(q, q, q, causal=False, needs_grad=False) == [
        "triton is not installed (No module named 'triton')",
        "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)",
    ]
    # Kernels decorated for the GPU cannot fall back to the interpreter later.
    monkeypatch.setattr(tv, "_kernels_interpreted", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert any("imported without" in r for r in tv.not_supported_reasons(q, q, q, False, False))


# ------------------------------------------------------------------ torch.library
def test_fake_shapes_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(10, 4, 40, dtype=torch.float16)
        k = torch.empty(7, 2, 40, dtype=torch.float16)
        cu = torch.empty(3, dtype=torch.int32)
        out, lse = torch.ops.patchpack.triton_varlen_fwd(q, k, k, cu, cu, 6, 5, 0.1, True)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert lse.shape == (4, 10) and lse.dtype == torch.float32
        dq, dk, dv = torch.ops.patchpack.triton_varlen_bwd(
            out, q, k, k, out, lse, cu, cu, 6, 5, 0.1, True
        )
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape


def test_opcheck():
    q, k, v, cu_q, cu_k = _make([3, 5], [4, 2], 2, 1, 16, torch.float32)
    fwd_args = (q, k, v, cu_q, cu_k, 5, 4, 0.25, True)
    torch.library.opcheck(torch.ops.patchpack.triton_varlen_fwd.default, fwd_args)
    out, lse = torch.ops.patchpack.triton_varlen_fwd(*fwd_args)
    bwd_args = (torch.randn_like(out), q, k, v, out, lse, cu_q, cu_k, 5, 4, 0.25, True)
    torch.library.opcheck(torch.ops.patchpack.triton_varlen_bwd.default, bwd_args)


def test_torch_compile_fullgraph_matches_eager():
    # aot_eager: traces through the fake and the registered autograd without needing a C++
    # toolchain for inductor; k is passed as v on purpose (duplicate inputs must trace).
    q, k, _, cu_q, cu_k = _make([4, 6], [3, 6], 2, 1, 16, torch.float32)

    def loss(q, k):
        out = triton_varlen_attention(q, k, k, cu_q, cu_k, 6, 6, causal=True)
        return out.square().sum()

    qe, ke = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    loss(qe, ke).backward()
    qc, kc = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    torch.compile(loss, backend="aot_eager", fullgraph=True)(qc, kc).backward()
    assert torch.equal(qc.grad, qe.grad) and torch.equal(kc.grad, ke.grad)
