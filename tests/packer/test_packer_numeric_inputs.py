"""Numbers the packer would silently get wrong (issue 15, item 7): non-integer lengths are refused,
never truncated, whatever their type; coords that would wrap in int32 are refused."""

import numpy as np
import pytest
import torch

from patchpack.packer import PatchedSample, pack, plan_packs


@pytest.mark.parametrize("lengths", [[2.7, 3], [3.0, 3], np.array([2.7, 3.0]), np.array([3.0, 3.0]),
                                     torch.tensor([2.5, 3.0]), [True, 3], [np.float32(2.0), 1]])
def test_plan_packs_refuses_non_integer_lengths(lengths):
    with pytest.raises(ValueError, match="integer"):
        plan_packs(lengths, 8)


@pytest.mark.parametrize("lengths", [[2, 3], np.array([2, 3]), np.array([2, 3], np.uint8), torch.tensor([2, 3]),
                                     [np.int64(2), 3]])
def test_plan_packs_takes_integers_of_any_kind(lengths):
    assert sorted(i for row in plan_packs(lengths, 8) for i in row) == [0, 1]


@pytest.mark.parametrize("max_len", [8.5, float("nan"), 0, -1, True])
def test_plan_packs_refuses_a_bad_max_len(max_len):
    with pytest.raises(ValueError, match="max_len"):
        plan_packs([1, 2], max_len)


def _sample(coords, n=2):
    return PatchedSample(torch.zeros(n, 4), coords, (1, 1, n))


def test_pack_refuses_coords_that_would_wrap_or_truncate():
    ok = torch.tensor([[0, 0, 0], [0, 0, 2**31 - 1]])
    assert pack([_sample(ok)], [[0]], 4).coords[0, 1, 2] == 2**31 - 1
    with pytest.raises(ValueError, match=r"coords must be in \[0, 2\*\*31 - 1\]"):
        pack([_sample(torch.tensor([[0, 0, 0], [0, 0, 2**31]]))], [[0]], 4)  # used to become 0 (wrapped)
    with pytest.raises(ValueError, match="coords must be in"):
        pack([_sample(torch.tensor([[0, 0, -1], [0, 0, 0]]))], [[0]], 4)
    with pytest.raises(ValueError, match="coords must be integers"):
        pack([_sample(torch.tensor([[0, 0, 0.5], [0, 0, 1.0]]))], [[0]], 4)


@pytest.mark.parametrize("plan, rows", [([[0.0]], None), ([[0]], 1.5), ([[True]], None)])
def test_pack_refuses_non_integer_plans_and_rows(plan, rows):
    with pytest.raises(ValueError):
        pack([_sample(torch.zeros(2, 3, dtype=torch.int64))], plan, 4, rows=rows)
