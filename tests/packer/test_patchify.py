"""Invariant 1 (docs/design.md): unpatchify(patchify(x)) == x bitwise, every patch size and shape, T=1 included."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import drop_tokens, patch_grid, patchify, unpatchify

patches = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))


@st.composite
def videos(draw):
    pt, ph, pw = draw(patches)
    c = draw(st.integers(1, 4))
    t = 1 if draw(st.booleans()) else pt * draw(st.integers(1, 3))
    h, w = ph * draw(st.integers(1, 5)), pw * draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(c, t, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x, (pt, ph, pw)


@settings(max_examples=150, deadline=None)
@given(videos())
def test_roundtrip_bitwise(case):
    x, patch = case
    c, t, h, w = x.shape
    tokens, coords = patchify(x, patch)
    grid = patch_grid(t, h, w, patch)
    assert tokens.shape == (grid[0] * grid[1] * grid[2], c * patch[0] * patch[1] * patch[2])
    assert coords.dtype == torch.int32 and coords.shape == (tokens.shape[0], 3)
    y = unpatchify(tokens, grid, patch, c, frames=t)
    assert y.dtype == x.dtype and torch.equal(y, x)
    # coords given (all tokens, shuffled) scatter back to the same video
    perm = torch.randperm(tokens.shape[0])
    assert torch.equal(unpatchify(tokens[perm], grid, patch, c, coords[perm], frames=t), x)


def test_image_with_temporal_patch_is_replicated():
    x = torch.randn(3, 1, 4, 6)
    tokens, coords = patchify(x, (4, 2, 2))
    assert patch_grid(1, 4, 6, (4, 2, 2)) == (1, 2, 3)
    assert (coords[:, 0] == 0).all()
    full = unpatchify(tokens, (1, 2, 3), (4, 2, 2), 3)
    assert full.shape == (3, 4, 4, 6)
    for f in range(4):  # every replicated frame is bitwise the image
        assert torch.equal(full[:, f : f + 1], x)
    assert torch.equal(unpatchify(tokens, (1, 2, 3), (4, 2, 2), 3, frames=1), x)


def test_token_order_and_feature_layout():
    # token (t, h, w) holds video[c, t*pt:(t+1)*pt, h*ph:.., w*pw:..] flattened as (c, pt, ph, pw)
    x = torch.arange(2 * 4 * 6 * 9, dtype=torch.float32).reshape(2, 4, 6, 9)
    tokens, coords = patchify(x, (2, 3, 3))
    assert coords.tolist()[:4] == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]
    i = 5  # (t=0, h=1, w=2)
    t, h, w = coords[i].tolist()
    assert torch.equal(tokens[i], x[:, 2 * t : 2 * t + 2, 3 * h : 3 * h + 3, 3 * w : 3 * w + 3].reshape(-1))


def test_dropped_tokens_scatter_with_zeros_elsewhere():
    x = torch.randn(3, 2, 8, 8)
    tokens, coords = patchify(x, (1, 2, 2))
    kept, kc = drop_tokens(tokens, coords, 0.5, generator=torch.Generator().manual_seed(0))
    y = unpatchify(kept, (2, 4, 4), (1, 2, 2), 3, kc)
    back, _ = patchify(y, (1, 2, 2))
    flat = (kc[:, 0].long() * 4 + kc[:, 1]) * 4 + kc[:, 2]
    mask = torch.zeros(32, dtype=torch.bool)
    mask[flat] = True
    assert torch.equal(back[mask], kept) and (back[~mask] == 0).all()


@pytest.mark.parametrize("shape,patch", [((3, 3, 4, 4), (2, 2, 2)), ((3, 2, 5, 4), (1, 2, 2)), ((3, 2, 4, 7), (1, 2, 2))])
def test_non_multiple_raises_naming_sizes(shape, patch):
    with pytest.raises(ValueError, match="not a positive multiple"):
        patchify(torch.zeros(shape), patch)


def test_unpatchify_rejects_bad_coords_and_counts():
    tokens, coords = patchify(torch.randn(1, 1, 4, 4), (1, 2, 2))
    with pytest.raises(ValueError, match="do not fill grid"):
        unpatchify(tokens[:3], (1, 2, 2), (1, 2, 2), 1)
    bad = coords.clone()
    bad[0, 1] = 5
    with pytest.raises(ValueError, match="outside grid"):
        unpatchify(tokens, (1, 2, 2), (1, 2, 2), 1, bad)
