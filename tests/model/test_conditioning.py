"""Per-token conditioning: given tokens see t = 0 inside a pack (invariants 4 and 5 with
conditioned and unconditioned samples in one row), stay clean in the loss, and the
training draw respects images and always leaves something to generate."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from dit_testing import make_sample, make_text, random_dit, run_packed

from patchpack.model import (
    ConditioningConfig,
    condition_batch,
    flow_loss,
    given_patches,
    hold_first_frame,
)
from patchpack.packer import PatchedSample, grid_coords, pack

GRIDS = [(3, 2, 3), (2, 2, 3), (1, 5, 2), (4, 2, 2)]
MAX_LEN = 48
TEXT_LENGTHS = [2, 5, 3, 1]
TIMES = [0.1, 0.5, 0.9, 0.3]
PLAN = [[0, 1, 3], [2]]


def _samples():
    """Samples 0 and 3 have given temporal patches (sample 3 with dropped tokens); 1 and 2 none."""
    samples = [make_sample(g, seed=i, keep=0.75 if i == 3 else 1.0) for i, g in enumerate(GRIDS)]
    samples[0].given = samples[0].coords[:, 0] == 0  # first frame
    samples[3].given = samples[3].coords[:, 0] >= 2  # last two frames
    return samples


def test_pack_carries_given_and_split_merge_to_keep_it():
    samples = _samples()
    batch = pack(samples, PLAN, MAX_LEN, rows=3)
    assert batch.given is not None and batch.given.dtype == torch.bool and batch.given.shape == batch.shape
    assert not bool((batch.given & ~batch.valid).any())  # never on padding
    order = [i for row in PLAN for i in row]
    parts = batch.split(batch.given)
    for s, i in enumerate(order):
        want = samples[i].given if samples[i].given is not None else torch.zeros(len(samples[i]), dtype=torch.bool)
        assert torch.equal(parts[s], want)
    assert torch.equal(batch.merge(parts), batch.given)
    assert torch.equal(batch.to("cpu").given, batch.given)
    # condition_index: s for generated tokens, S + s for given ones, -1 on padding
    idx = batch.condition_index().reshape(batch.shape)
    seg = batch.segment_ids.long()
    assert torch.equal(idx, torch.where(batch.given, seg + batch.num_samples, seg))
    assert pack([make_sample((1, 2, 2))], [[0]], 8).given is None  # no condition: no field, no cost


def test_with_given_refuses_padding_and_other_shapes():
    batch = pack([make_sample((1, 2, 2))], [[0]], 8)
    with pytest.raises(ValueError, match="padding"):
        batch.with_given(torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="given must be bool"):
        batch.with_given(torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="given must be bool"):
        pack([PatchedSample(torch.zeros(4, 12), grid_coords((1, 2, 2)), (1, 2, 2), given=torch.zeros(3))], [[0]], 8)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mixed_conditioned_and_plain_samples_are_pack_invariant(backend):
    model = random_dit(backend)
    samples, texts = _samples(), make_text(TEXT_LENGTHS)
    lens = [len(s) for s in samples]
    assert sum(lens[i] for i in PLAN[0]) < MAX_LEN  # padding in the conditioned row
    packed = run_packed(model, samples, PLAN, MAX_LEN, TIMES, texts, rows=3)
    tol = dict(rtol=1e-5, atol=1e-5) if backend == "reference" else dict(rtol=1e-4, atol=1e-4)
    for i, s in enumerate(samples):
        alone = run_packed(model, [s], [[0]], len(s) + 3, [TIMES[i]], [texts[i]])[0]
        torch.testing.assert_close(packed[i], alone, **tol)
        assert alone.abs().max() > 1e-2  # guard: real outputs


def test_a_given_token_sees_t_zero():
    """All tokens given at t equals nothing given at t = 0; none given equals no field at all."""
    model = random_dit("reference")
    text = make_text([3])
    s = make_sample((2, 2, 3), seed=5)
    plain0 = run_packed(model, [s], [[0]], 16, [0.0], text)[0]
    s.given = torch.ones(len(s), dtype=torch.bool)
    all_given = run_packed(model, [s], [[0]], 16, [0.7], text)[0]
    torch.testing.assert_close(all_given, plain0, rtol=1e-5, atol=1e-5)
    s.given = torch.zeros(len(s), dtype=torch.bool)
    none_given = run_packed(model, [s], [[0]], 16, [0.7], text)[0]
    s.given = None
    torch.testing.assert_close(none_given, run_packed(model, [s], [[0]], 16, [0.7], text)[0], rtol=1e-5, atol=1e-5)


def test_changing_one_samples_given_tokens_moves_no_other_sample():
    model = random_dit("reference")
    samples, texts = _samples(), make_text(TEXT_LENGTHS)
    base = run_packed(model, samples, PLAN, MAX_LEN, TIMES, texts)
    samples[1].given = samples[1].coords[:, 0] == 1  # sample 1 now has its second frame given
    moved = run_packed(model, samples, PLAN, MAX_LEN, TIMES, texts)
    assert not torch.allclose(moved[1], base[1], atol=1e-3)  # the change is real
    for i in (0, 2, 3):
        torch.testing.assert_close(moved[i], base[i], rtol=1e-5, atol=1e-5)


class _Recorder(torch.nn.Module):
    """A stand-in DiT: records its input and answers `value` everywhere."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value, self.seen = value, None

    def forward(self, batch, t_S, text, lengths):
        self.seen = batch
        return self.value.expand_as(batch.tokens).clone()


def test_flow_loss_keeps_given_tokens_clean_and_counts_generated_tokens_only():
    samples = _samples()
    batch = pack(samples, PLAN, MAX_LEN)
    text, lengths = torch.zeros(4, 16), torch.ones(4, dtype=torch.int64)
    rec = _Recorder(torch.zeros(12))
    out = flow_loss(rec, batch, text, lengths, t_S=torch.full((4,), 0.8), generator=torch.Generator().manual_seed(0))
    given = batch.given
    assert torch.equal(rec.seen.tokens[given], batch.tokens[given])  # entered clean
    assert not torch.allclose(rec.seen.tokens[batch.valid & ~given], batch.tokens[batch.valid & ~given])
    # the same noise and predictions, but a huge error on given tokens: the loss does not move
    wild = batch.tokens.clone()
    wild[given] += 100.0
    out2 = flow_loss(rec, batch.with_tokens(wild), text, lengths, t_S=torch.full((4,), 0.8),
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, out2.loss)
    # the same loss by hand: mean over generated tokens of |0 - (noise - x0)|^2
    noise = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(0)) * batch.valid[..., None]
    gen = batch.valid & ~given
    want = (noise - batch.tokens)[gen].pow(2).mean()
    torch.testing.assert_close(out.loss, want)
    assert torch.isfinite(out.loss_S).all()


def _batch_of(grids, *, patch_dim=12, max_len=64):
    samples = [make_sample(g, seed=i, patch_dim=patch_dim) for i, g in enumerate(grids)]
    plan, row, used = [], [], 0
    for i, s in enumerate(samples):
        if used + len(s) > max_len:
            plan.append(row)
            row, used = [], 0
        row.append(i)
        used += len(s)
    plan.append(row)
    return pack(samples, plan, max_len)


def test_training_draw_never_conditions_images_and_always_leaves_a_generated_patch():
    cfg = ConditioningConfig(none=0.0, first_frame=1, first_frames=1, last_frames=1, first_and_last=1,
                             random_frames=1)
    grids = [(1, 3, 3), (2, 2, 2), (3, 2, 2), (5, 2, 1), (8, 1, 2), (1, 4, 2)]
    batch = _batch_of(grids)
    gen = torch.Generator().manual_seed(0)
    seen = Counter()
    for _ in range(60):
        out, strategies = condition_batch(batch, cfg, patch=(1, 1, 1), channels=12, generator=gen)
        seen.update(strategies)
        per = out.split(out.given)
        t_coords = out.split(out.coords[..., 0])
        for s, (g, t, strategy) in enumerate(zip(per, t_coords, strategies)):
            t_patches = int(out.grid[s, 0])
            if t_patches == 1:
                assert strategy == "none" and not g.any()  # images: never given themselves
                continue
            assert g.any() and not g.all()  # something given, something generated
            given_t = set(t[g].tolist())
            if strategy == "first_frame":
                assert given_t == {0}
            elif strategy == "first_frames":
                assert given_t == set(range(len(given_t)))
            elif strategy == "last_frames":
                assert given_t == set(range(t_patches - len(given_t), t_patches))
            elif strategy == "first_and_last":
                assert 0 in given_t and t_patches - 1 in given_t and t_patches >= 3
    assert set(seen) == {"none", "first_frame", "first_frames", "last_frames", "first_and_last", "random_frames"}
    # the same seed draws the same conditions
    a = condition_batch(batch, cfg, patch=(1, 1, 1), channels=12, generator=torch.Generator().manual_seed(3))[0]
    b = condition_batch(batch, cfg, patch=(1, 1, 1), channels=12, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a.given, b.given)


def test_default_config_draws_nothing_and_weights_are_checked():
    assert not ConditioningConfig().enabled
    batch = _batch_of([(3, 2, 2)])
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    out, strategies = condition_batch(batch, ConditioningConfig(), patch=(1, 1, 1), channels=12, generator=gen)
    assert out is batch and out.given is None and strategies == ["none"]
    assert torch.equal(gen.get_state(), before)  # nothing drawn
    with pytest.raises(ValueError, match="positive sum"):
        ConditioningConfig(none=0.0)
    with pytest.raises(ValueError, match="max_given"):
        ConditioningConfig(max_given=1.0)


def test_first_frame_with_temporal_patch_holds_frame_zero_like_an_image():
    """pt = 2: the given first patch is frame 0 twice, the token an image patchifies to."""
    from patchpack.packer import patchify

    video = torch.randn(3, 4, 4, 4)
    tokens, _ = patchify(video, (2, 2, 2))
    image_tokens, _ = patchify(video[:, :1], (2, 2, 2))
    held = hold_first_frame(tokens, patch=(2, 2, 2), channels=3)
    assert torch.equal(held[:4], image_tokens)  # patch 0's tokens (grid 2x2 per frame)
    cfg = ConditioningConfig(none=0.0, first_frame=1.0)
    batch = pack([PatchedSample(tokens, grid_coords((2, 2, 2)), (2, 2, 2))], [[0]], 8)
    out, strategies = condition_batch(batch, cfg, patch=(2, 2, 2), channels=3, generator=torch.Generator())
    assert strategies == ["first_frame"]
    assert torch.equal(out.tokens[0, :4], image_tokens) and torch.equal(out.tokens[0, 4:], tokens[4:])
    assert out.given[0].tolist() == [True] * 4 + [False] * 4


def test_given_frames_map_to_whole_temporal_patches():
    assert given_patches(torch.tensor([True, True, False, False]), frames=4, patch_t=2).tolist() == [True, False]
    with pytest.raises(ValueError, match="temporal patch 0"):
        given_patches(torch.tensor([True, False, False, False]), frames=4, patch_t=2)
    assert given_patches(torch.tensor([True]), frames=1, patch_t=2).tolist() == [True]
