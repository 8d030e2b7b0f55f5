"""pack(..., out=): reusing a buffer gives the same batch bitwise, and a wrong buffer is refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import PackedBatch, PatchedSample, pack, plan_packs

FIELDS = ("tokens", "coords", "segment_ids", "cu_seqlens", "segment_sample", "grid", "num_tokens", "row", "offset")


def samples_of(lengths, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        PatchedSample(torch.randn(n, d, generator=g), torch.randint(0, 9, (n, 3), generator=g, dtype=torch.int32), (1, 1, n), key=f"k{i}")
        for i, n in enumerate(lengths)
    ]


def assert_same(a: PackedBatch, b: PackedBatch):
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.max_seqlen == b.max_seqlen and a.keys == b.keys


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=30), extra=st.integers(0, 2), seed=st.integers(0, 5))
def test_out_equals_fresh_bitwise_over_a_dirty_buffer(lengths, extra, seed):
    plan = plan_packs(lengths, 50, "bfd")
    samples = samples_of(lengths, seed=seed)
    rows = len(plan) + extra
    fresh = pack(samples, plan, 50, rows=rows)
    bufs = (torch.full((rows, 50, 7), float("nan")), torch.full((rows, 50, 3), -7, dtype=torch.int32), torch.full((rows, 50), 99, dtype=torch.int32))
    reused = pack(samples, plan, 50, rows=rows, out=bufs)
    assert_same(fresh, reused)
    assert reused.tokens.data_ptr() == bufs[0].data_ptr() and reused.segment_ids.data_ptr() == bufs[2].data_ptr()
    # an earlier batch as the buffer, holding other values
    first = pack(samples_of(lengths, seed=seed + 1), plan, 50, rows=rows)
    assert_same(fresh, pack(samples, plan, 50, rows=rows, out=first))


def test_coords_of_other_int_dtypes_are_converted():
    s = samples_of([5, 3])
    s[1] = PatchedSample(s[1].tokens, s[1].coords.long(), s[1].grid, s[1].key)
    a = pack(s, [[0, 1]], 10)
    b = pack(s, [[0, 1]], 10, out=pack(s, [[0, 1]], 10))
    assert_same(a, b)
    assert a.coords.dtype == torch.int32


@pytest.mark.parametrize(
    "bufs,match",
    [
        ((torch.zeros(2, 16, 7), torch.zeros(2, 16, 3, dtype=torch.int32), torch.zeros(2, 16, dtype=torch.int32)), r"out tokens is \(2, 16, 7\) torch.float32; this pack needs \(3, 16, 7\) torch.float32"),
        ((torch.zeros(3, 16, 7, dtype=torch.float64), torch.zeros(3, 16, 3, dtype=torch.int32), torch.zeros(3, 16, dtype=torch.int32)), r"out tokens is \(3, 16, 7\) torch.float64; this pack needs \(3, 16, 7\) torch.float32"),
        ((torch.zeros(3, 16, 7), torch.zeros(3, 16, 3), torch.zeros(3, 16, dtype=torch.int32)), r"out coords is \(3, 16, 3\) torch.float32; this pack needs \(3, 16, 3\) torch.int32"),
        ((torch.zeros(3, 16, 7), torch.zeros(3, 16, 3, dtype=torch.int32), torch.zeros(16, 3, dtype=torch.int32).T), r"out segment_ids must be a contiguous CPU tensor"),
        ((torch.zeros(3, 16, 7), torch.zeros(3, 16, 3, dtype=torch.int32)), r"out must be a PackedBatch or 3 tensors"),
        ("buffer", r"out must be a PackedBatch or 3 tensors"),
    ],
)
def test_wrong_buffers_are_refused(bufs, match):
    s = samples_of([10, 6, 16])
    with pytest.raises(ValueError, match=match):
        pack(s, [[0, 1], [2]], 16, rows=3, out=bufs)
