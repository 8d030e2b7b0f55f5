"""Invariants 4 and 5 (docs/design.md) at model level: pack invariance and no leakage between samples."""

from __future__ import annotations

import pytest
import torch
from dit_testing import make_sample, make_text, random_dit, run_packed

from patchpack.packer import pack

GRIDS = [(1, 3, 4), (2, 2, 3), (1, 5, 2), (3, 2, 2)]
TEXT_LENGTHS = [2, 5, 3, 1]
TIMES = [0.1, 0.5, 0.9, 0.3]

# fp32 reference: alone vs packed differ only by summation order in the linear layers.
TOL = {"reference": dict(rtol=1e-5, atol=1e-5), "cpu": dict(rtol=1e-4, atol=1e-4)}


def _samples():
    return [make_sample(g, seed=i, keep=0.75 if i == 1 else 1.0) for i, g in enumerate(GRIDS)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("extrapolation", ["none", "ntk"])
def test_output_alone_equals_output_packed(backend, extrapolation):
    model = random_dit(backend, rope_extrapolation=extrapolation, rope_train_grid=(2, 3, 3))
    samples, texts = _samples(), make_text(TEXT_LENGTHS)
    lens = [len(s) for s in samples]
    # Two rows with padding in each; samples of different sizes, times and captions share a row.
    max_len = 40
    plan = [[0, 1, 3], [2]]
    assert sum(lens[i] for i in plan[0]) < max_len  # padding present in both rows
    packed = run_packed(model, samples, plan, max_len, TIMES, texts, rows=3)  # + an all-padding row
    for i, s in enumerate(samples):
        alone = run_packed(model, [s], [[0]], len(s) + 3, [TIMES[i]], [texts[i]])[0]
        torch.testing.assert_close(packed[i], alone, **TOL[backend])
        assert alone.abs().max() > 1e-2  # guard: the random model produces real outputs


def test_backends_agree_on_a_pack():
    samples, texts = _samples(), make_text(TEXT_LENGTHS)
    plan = [[0, 1, 3], [2]]
    ref = run_packed(random_dit("reference"), samples, plan, 40, TIMES, texts)
    cpu = run_packed(random_dit("cpu"), samples, plan, 40, TIMES, texts)
    for a, b in zip(ref, cpu):
        torch.testing.assert_close(a, b, **TOL["cpu"])


@pytest.mark.parametrize("what", ["tokens", "caption", "timestep", "coords"])
def test_perturbing_one_sample_moves_no_other(what):
    model = random_dit("reference")
    samples, texts = _samples(), make_text(TEXT_LENGTHS)
    plan, j = [[0, 1, 3], [2]], 1
    base = run_packed(model, samples, plan, 40, TIMES, texts)
    times = list(TIMES)
    s = samples[j]
    if what == "tokens":
        s.tokens = s.tokens + 5.0 * torch.randn_like(s.tokens)
    elif what == "caption":
        texts[j] = torch.randn(7, texts[j].shape[1])  # other content and length
    elif what == "timestep":
        times[j] = 0.99
    else:
        s.coords = s.coords.flip(0).contiguous()
    moved = run_packed(model, samples, plan, 40, times, texts)
    assert not torch.allclose(moved[j], base[j], atol=1e-3)  # the perturbation is real
    for i in range(len(samples)):
        if i != j:
            torch.testing.assert_close(moved[i], base[i], rtol=1e-5, atol=1e-5)  # summation order only


def test_padding_stays_finite_with_large_padding_runs():
    model = random_dit("reference")
    s = make_sample((1, 2, 2))
    batch = pack([s], [[0]], 64, rows=2)  # 60 + 64 padding tokens
    out = model(batch, torch.tensor([0.5]), make_text([3])[0], torch.tensor([3]))
    assert out.shape == (2, 64, 12) and torch.isfinite(out).all()


def test_bad_inputs_name_the_values():
    model = random_dit("reference")
    s = make_sample((1, 2, 2))
    batch = pack([s], [[0]], 8)
    text = make_text([3])[0]
    with pytest.raises(ValueError, match=r"t_S must be \[S\]=\[1\]"):
        model(batch, torch.tensor([0.5, 0.5]), text, torch.tensor([3]))
    with pytest.raises(ValueError, match="sum to 4"):
        model(batch, torch.tensor([0.5]), text, torch.tensor([4]))
    with pytest.raises(ValueError, match="patch_dim=12"):
        model(pack([make_sample((1, 2, 2), patch_dim=5)], [[0]], 8), torch.tensor([0.5]), text, torch.tensor([3]))


def test_attn_backend_is_passed_through_not_dropped():
    model = random_dit("bogus")
    s = make_sample((1, 2, 2))
    with pytest.raises(ValueError, match="bogus"):
        model(pack([s], [[0]], 8), torch.tensor([0.5]), make_text([3])[0], torch.tensor([3]))
