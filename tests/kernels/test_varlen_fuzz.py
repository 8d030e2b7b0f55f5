"""Fuzzing varlen_attention's validation (issue 15): any input either raises ValueError naming a
value, or runs on the reference backend and returns the right shape. No other exception."""

from __future__ import annotations

import pytest
import torch

from patchpack.kernels import varlen_attention

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32]
SCALARS = st.one_of(st.integers(-3, 40), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                    st.just(None), st.just(torch.tensor(5)))


def _lengths_cu(draw, total):
    n = draw(st.integers(0, 4))
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=n, max_size=n)))
    return torch.tensor([0, *cuts, total], dtype=torch.int32)


def _longest(cu):
    v = cu.flatten().tolist()
    return max([int(b - a) for a, b in zip(v[:-1], v[1:])], default=0)


def _broken_cu(draw, cu):
    how = draw(st.sampled_from(["shift", "drop_end", "negative", "reverse", "huge", "empty", "int64", "float", "2d"]))
    v = cu.tolist()
    if how == "shift":
        v = [x + 1 for x in v]
    elif how == "drop_end":
        v = v[:-1] or [0]
    elif how == "negative":
        v[len(v) // 2] = -5
    elif how == "reverse":
        v = list(reversed(v))
    elif how == "huge":
        v[-1] = 2**31 - 1
    elif how == "empty":
        v = []
    t = torch.tensor(v, dtype=torch.int32)
    return {"int64": cu.long(), "float": cu.float(), "2d": cu[None]}.get(how, t)


MUTATIONS = ["none"] * 6 + ["dtype", "dtype_k", "heads", "heads_k", "headdim", "headdim_k", "v", "cu_q", "cu_k",
                            "max_q", "max_k", "scale", "zero_tokens"]


@st.composite
def inputs(draw):
    """A well-formed call, then (most of the time) one thing broken in one of many ways."""
    t = draw(st.integers(1, 12))
    nheads_k = draw(st.integers(1, 3))
    nheads = nheads_k * draw(st.integers(1, 2))
    headdim = draw(st.sampled_from([8, 16, 5]))
    dtype = draw(st.sampled_from(DTYPES[:3]))
    cu = _lengths_cu(draw, t)
    a = dict(q=torch.randn(t, nheads, headdim).to(dtype), k=torch.randn(t, nheads_k, headdim).to(dtype),
             cu_seqlens_q=cu, cu_seqlens_k=cu.clone(), max_seqlen_q=_longest(cu), max_seqlen_k=_longest(cu),
             softmax_scale=None, causal=draw(st.booleans()))
    a["v"] = torch.randn_like(a["k"])
    m = draw(st.sampled_from(MUTATIONS))
    if m == "dtype":
        a["q"] = a["q"].to(draw(st.sampled_from(DTYPES)))
    elif m == "dtype_k":
        a["k"] = a["k"].to(draw(st.sampled_from(DTYPES)))
    elif m == "heads":
        a["q"] = torch.randn(t, draw(st.integers(0, 5)), headdim).to(dtype)
    elif m == "heads_k":
        a["k"] = a["v"] = torch.randn(t, draw(st.integers(0, 5)), headdim).to(dtype)
    elif m == "headdim":
        a["q"] = torch.randn(t, nheads, draw(st.sampled_from([0, 1, 4]))).to(dtype)
    elif m == "headdim_k":
        a["k"] = a["v"] = torch.randn(t, nheads_k, draw(st.sampled_from([0, 3]))).to(dtype)
    elif m == "v":
        a["v"] = draw(st.sampled_from([a["v"][:, :1], a["v"].flatten(1), a["v"][:-1], a["v"].double()]))
    elif m in ("cu_q", "cu_k"):
        a[f"cu_seqlens_{m[-1]}"] = _broken_cu(draw, cu)
    elif m in ("max_q", "max_k"):
        a[f"max_seqlen_{m[-1]}"] = draw(st.one_of(SCALARS, st.integers(0, _longest(cu))))
    elif m == "scale":
        a["softmax_scale"] = draw(SCALARS)
    elif m == "zero_tokens":
        z = torch.zeros(2, dtype=torch.int32)
        a.update(q=a["q"][:0], k=a["k"][:0], v=a["v"][:0], cu_seqlens_q=z, cu_seqlens_k=z.clone(),
                 max_seqlen_q=0, max_seqlen_k=0)
    return a


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(inputs())
def test_no_input_gets_past_validation_and_then_crashes(args):
    try:
        out = varlen_attention(**args, backend="reference")
    except ValueError:
        return
    q = args["q"]
    assert out.shape == q.shape and out.dtype == q.dtype
    scale = args["softmax_scale"]
    if q.numel() and q.dtype == torch.float32 and args["v"].numel() and (scale is None or abs(scale) <= 100):
        assert torch.isfinite(out).all()  # (a finite but huge scale may overflow the scores: allowed)


def test_the_fuzzer_reaches_both_outcomes():
    """A guard against a vacuous pass: the strategy produces accepted and refused inputs."""
    outcomes = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(inputs())
    def probe(args):
        try:
            varlen_attention(**args, backend="reference")
            outcomes.add("ran")
        except ValueError:
            outcomes.add("refused")

    probe()
    assert outcomes == {"ran", "refused"}
