"""The batch contract's own operations: merge inverts split, per-token gather, segment means."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import PatchedSample, grid_coords, pack, plan_packs, segment_mean


def _batch(lengths, max_len, *, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = [PatchedSample(torch.randn(n, d, generator=g), grid_coords((1, 1, n)), (1, 1, n), key=str(i))
               for i, n in enumerate(lengths)]
    return pack(samples, plan_packs(lengths, max_len, "bfd"), max_len), samples


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=9), st.integers(0, 3))
def test_merge_inverts_split_bitwise_and_zeroes_padding(lengths, extra):
    batch, _ = _batch(lengths, 12 + extra)
    parts = batch.split(batch.tokens)
    merged = batch.merge(parts)
    assert torch.equal(merged, batch.tokens)  # padding is zero in both
    assert [torch.equal(a, b) for a, b in zip(batch.split(merged), parts)] == [True] * len(parts)
    wider = batch.merge([p.repeat(1, 2) for p in parts])  # other feature sizes lay out too
    assert wider.shape == (*batch.shape, 6) and torch.equal(wider[..., :3], batch.tokens)


def test_multi_sample_rows_occur_in_these_batches():
    batch, _ = _batch([3, 4, 5, 2, 1], 8)
    assert int(batch.row.bincount().max()) > 1 and bool((~batch.valid).any())


def test_per_token_and_segment_mean_follow_the_samples():
    batch, samples = _batch([3, 4, 5, 2, 1], 8)
    ids = torch.arange(batch.num_samples, dtype=torch.float32) + 1
    tok = batch.per_token(ids, pad_value=-7.0).reshape(*batch.shape)
    assert torch.equal(tok[batch.valid], (batch.segment_ids[batch.valid] + 1).float())
    assert bool((tok[~batch.valid] == -7).all())
    means = batch.segment_mean(batch.tokens)
    order = [int(k) for k in batch.keys]
    want = torch.stack([samples[i].tokens.mean(0) for i in order])
    torch.testing.assert_close(means, want)
    # the same reduction over a plain varlen layout (captions), empty runs give zeros
    torch.testing.assert_close(segment_mean(torch.ones(5, 2), torch.tensor([2, 0, 3])),
                               torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))


def test_with_tokens_and_merge_refuse_other_layouts():
    batch, _ = _batch([3, 4], 8)
    other = batch.with_tokens(torch.zeros(*batch.shape, 5))
    assert other.tokens.shape[-1] == 5 and other.cu_seqlens is batch.cu_seqlens
    with pytest.raises(ValueError, match="with_tokens expects"):
        batch.with_tokens(torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="one tensor per sample"):
        batch.merge([torch.zeros(3, 1)])
    with pytest.raises(ValueError, match="num_tokens"):
        batch.merge([torch.zeros(5, 1), torch.zeros(2, 1)])
    with pytest.raises(ValueError, match="segment_mean expects"):
        batch.segment_mean(torch.zeros(3, 3))
