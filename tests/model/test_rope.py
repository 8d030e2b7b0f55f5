"""3D RoPE: split across axes, identity at 0, relative positions, packed == unpacked, ntk/pi."""

from __future__ import annotations

import pytest
import torch
from dit_testing import make_sample

from patchpack.model import Rope3D, apply_rope, rope_axis_pairs
from patchpack.packer import grid_coords, pack, per_token


def test_axis_split_is_documented_quarter_and_three_eighths():
    assert rope_axis_pairs(64, (2, 3, 3)) == (8, 12, 12)
    assert rope_axis_pairs(72, (2, 3, 3)) == (9, 13, 14)  # XL head_dim: remainder to w
    assert rope_axis_pairs(32, (0, 1, 1)) == (0, 8, 8)
    with pytest.raises(ValueError, match="head_dim=7"):
        rope_axis_pairs(7, (2, 3, 3))


@pytest.mark.parametrize("mode", ["none", "ntk", "pi"])
def test_rope_at_zero_coords_is_identity(mode):
    rope = Rope3D(32, extrapolation=mode, train_grid=(2, 2, 2))
    x = torch.randn(5, 3, 32)
    cos, sin = rope(torch.zeros(5, 3, dtype=torch.int32), torch.full((5, 3), 9))
    assert torch.equal(apply_rope(x, cos, sin), x)


def test_scores_depend_on_relative_position_only():
    rope = Rope3D(32)
    q, k = torch.randn(1, 2, 32), torch.randn(1, 2, 32)
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[0, 5, 1]])
    shift = torch.tensor([[4, 7, 2]])

    def score(pa, pb):
        ca, sa = rope(pa)
        cb, sb = rope(pb)
        return (apply_rope(q, ca, sa) * apply_rope(k, cb, sb)).sum(-1)

    torch.testing.assert_close(score(a, b), score(a + shift, b + shift), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(a, b), score(a, b + shift), atol=1e-3)  # guard: positions matter


@pytest.mark.parametrize("mode", ["none", "ntk", "pi"])
def test_packed_coords_give_the_same_rotation_as_alone(mode):
    rope = Rope3D(32, extrapolation=mode, train_grid=(2, 3, 3))
    samples = [make_sample(g, seed=i, keep=0.7) for i, g in enumerate([(1, 4, 5), (3, 2, 2), (2, 6, 1)])]
    batch = pack(samples, [[0, 2], [1]], 24)
    seg = batch.segment_ids.reshape(-1)
    cos, sin = rope(batch.coords.reshape(-1, 3), per_token(batch.grid, seg, pad_value=1))
    for s, (c_packed, s_packed) in enumerate(zip(batch.split(cos.reshape(*batch.shape, -1)), batch.split(sin.reshape(*batch.shape, -1)))):
        sample = samples[[0, 2, 1][s]]
        grid = torch.tensor(sample.grid).expand(len(sample), 3)
        c_alone, s_alone = rope(sample.coords, grid)
        assert torch.equal(c_packed, c_alone[:, 0]) and torch.equal(s_packed, s_alone[:, 0])


def test_pi_squeezes_positions_and_ntk_slows_the_lowest_frequency():
    pt, ph, pw = rope_axis_pairs(32, (2, 3, 3))
    coords = grid_coords((1, 8, 1))  # h runs 0..7
    big = torch.tensor([[1, 8, 1]]).expand(8, 3)  # h grid 2x the trained 4
    none = Rope3D(32, train_grid=(1, 4, 1))
    pi = Rope3D(32, extrapolation="pi", train_grid=(1, 4, 1))
    ntk = Rope3D(32, extrapolation="ntk", train_grid=(1, 4, 1))
    ang = lambda r, c, g: torch.atan2(r(c, g)[1], r(c, g)[0])[:, 0]  # noqa: E731
    h = slice(pt, pt + ph)
    # pi: position 2p on a 2x grid turns like position p did in training.
    torch.testing.assert_close(ang(pi, coords[::2], big[::2])[:, h], ang(none, coords[::2] // 2, None)[:, h])
    # ntk: the highest frequency is untouched, the lowest turns exactly 2x slower.
    freq = lambda r, g: ang(r, coords[1:2], g)[0, h]  # noqa: E731
    torch.testing.assert_close(freq(ntk, big[:1])[0], freq(none, None)[0])
    torch.testing.assert_close(freq(ntk, big[:1])[-1], freq(none, None)[-1] / 2)
    # Grids inside the trained range are not rescaled.
    small = torch.tensor([[1, 4, 1]]).expand(8, 3)
    assert torch.equal(ntk(coords, small)[0], none(coords)[0])
    assert torch.equal(pi(coords, small)[0], none(coords)[0])
