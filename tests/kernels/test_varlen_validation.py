"""Bad inputs raise ValueError naming the offending value."""

import pytest
import torch

from patchpack.kernels import varlen_attention
from patchpack.kernels.testing import random_varlen_inputs


def _call(**changes):
    x = random_varlen_inputs([3, 5, 2], nheads=4, nheads_k=2, headdim=16, dtype=torch.float32)
    args = dict(q=x.q, k=x.k, v=x.v, cu_seqlens_q=x.cu_seqlens_q, cu_seqlens_k=x.cu_seqlens_k,
                max_seqlen_q=5, max_seqlen_k=5)
    args.update({name: fn(args) if callable(fn) else fn for name, fn in changes.items()})
    return varlen_attention(**args)


CU = lambda *values: torch.tensor(values, dtype=torch.int32)  # noqa: E731

BAD = {
    "cu int64": (dict(cu_seqlens_q=CU(0, 3, 8, 10).long()), "torch.int64"),
    "cu decreasing": (dict(cu_seqlens_q=CU(0, 6, 4, 10)), "cu_seqlens_q[1]=6 > cu_seqlens_q[2]=4"),
    "cu start": (dict(cu_seqlens_k=CU(1, 3, 8, 10)), "cu_seqlens_k[0] must be 0, got 1"),
    "cu end": (dict(cu_seqlens_q=CU(0, 3, 8, 9)), "cu_seqlens_q[-1]=9"),
    "cu lengths": (dict(cu_seqlens_k=CU(0, 3, 10)), "len(cu_seqlens_q)=4 != len(cu_seqlens_k)=3"),
    "cu 2-D": (dict(cu_seqlens_q=CU(0, 3, 8, 10)[None]), "shape=(1, 4)"),
    "heads not divisible": (dict(q=lambda a: a["q"][:, :3]), "nheads=3"),
    "kv heads differ": (dict(v=lambda a: a["v"][:, :1]), "v=(10, 1, 16)"),
    "headdim": (dict(k=lambda a: a["k"][..., :8], v=lambda a: a["v"][..., :8]), "headdim mismatch: q has 16, k/v have 8"),
    "float64": (dict(q=lambda a: a["q"].double()), "torch.float64"),
    "mixed dtypes": (dict(k=lambda a: a["k"].half(), v=lambda a: a["v"].half()), "k=torch.float16"),
    "rank": (dict(q=lambda a: a["q"].flatten(1)), "shape=(10, 64)"),
    "max_seqlen too small": (dict(max_seqlen_q=4), "max_seqlen_q=4"),
    "max_seqlen tensor": (dict(max_seqlen_k=torch.tensor(5)), "max_seqlen_k"),
    "device": (dict(k=lambda a: a["k"].to("meta"), v=lambda a: a["v"].to("meta")), "k=meta"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_value(case):
    changes, expected = BAD[case]
    with pytest.raises(ValueError) as err:
        _call(**changes)
    assert expected in str(err.value), str(err.value)


def test_good_input_passes_and_empty_segments_are_allowed():
    out = _call(cu_seqlens_q=CU(0, 0, 10, 10), cu_seqlens_k=CU(0, 4, 10, 10),
                max_seqlen_q=10, max_seqlen_k=6)
    assert out.shape == (10, 4, 16)


def test_validate_false_skips_value_checks():
    # wrong max_seqlen is not caught (the cpu backend does not need it); the caller opted out
    out = _call(max_seqlen_q=1, validate=False)
    assert out.shape == (10, 4, 16)
