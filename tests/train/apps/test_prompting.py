"""Prompting with images and videos from a run: given frames come back exactly in pixel space
(trained and unseen sizes, every mode), mixed requests equal the same requests alone,
strength 0 returns the input, sizes keep their aspect, and latent runs encode given frames."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from run_testing import tiny_run

from patchpack.train.apps import prompting as P
from patchpack.train.apps.generate import Request, load_run, model_condition, sample
from patchpack.train.data.synth import shape_clip

pytest.importorskip("av")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step pixel run, patch (2, 4, 4), trained at <= 64 tokens (16x16 clips of 4 frames)."""
    run_dir, _ = tiny_run(tmp_path_factory.mktemp("prompting"), "conditioning.first_frame=1.0",
                          "conditioning.first_frames=1.0")
    return load_run(run_dir)


def _clip(frames, h, w, seed=0):
    return shape_clip(random.Random(seed), frames, h, w)[:2]


def _modes(run, h, w):
    """One request per mode at h x w, plus a plain one; [(request, frames expected back)]."""
    clip, cap = _clip(12, h, w)
    other, _ = _clip(12, h, w, seed=1)
    return [
        P.image(run, Request(cap, 8, h, w), clip[:1]),
        P.extend(run, Request(cap, 0, h, w), clip[:6], 4),
        P.extend(run, Request(cap, 0, h, w), clip[:6], 2, backward=True),
        P.connect(run, Request(cap, 8, h, w), clip, other),
        P.edit(run, Request(cap, 4, h, w), clip, 0.0),
        Request(cap, 4, h, w),
    ]


@pytest.mark.parametrize("size", [(16, 16), (8, 24), (24, 24)], ids=["trained", "unseen-aspect", "unseen-size"])
def test_given_frames_come_back_exactly_in_every_mode(run, size):
    reqs = _modes(run, *size)
    assert [r.condition.mode if r.condition else None for r in reqs] == [
        "image", "extend", "extend backward", "connect", "edit", None]
    videos = sample(run, reqs, steps=3, seed=5)
    for r, v in zip(reqs, videos):
        assert v.shape == (r.frames, *size, 3)
        if r.condition is None:
            continue
        g = r.condition.given if r.condition.strength is None else np.ones(r.frames, bool)
        assert g.any() and (r.condition.strength is not None or not g.all())  # guard: both kinds present
        assert np.array_equal(v[g], r.condition.frames[g]), r.condition.mode  # exact: 8-bit in, 8-bit out
    image, fwd, back, conn = reqs[:4]
    assert image.condition.given.tolist() == [True, True] + [False] * 6  # pt = 2: the image held over patch 0
    assert np.array_equal(videos[0][1], videos[0][0])
    assert (fwd.frames, back.frames) == (10, 8)  # 6 + 4; backward: 6 + 2 -> 6 given frames + 2 new
    assert back.condition.given.tolist() == [False, False] + [True] * 6
    assert conn.condition.given.tolist() == [True, True] + [False] * 4 + [True, True]


def test_mixed_requests_equal_the_same_requests_alone(run):
    reqs = _modes(run, 16, 16) + _modes(run, 8, 24)[:2]
    together = sample(run, reqs, steps=3, seed=2)
    for i in (0, 1, 3, 5, 6):
        alone = sample(run, [reqs[i]], steps=3, seed=2 + i)[0]  # request i draws seed + i in company
        assert np.abs(alone.astype(int) - together[i].astype(int)).max() <= 1  # uint8 rounding at most


def test_strength_zero_returns_the_input_and_one_is_plain_generation(run):
    clip, cap = _clip(4, 16, 16)
    zero, one = P.edit(run, Request(cap, 4, 16, 16), clip, 0.0), P.edit(run, Request(cap, 4, 16, 16), clip, 1.0)
    half = P.edit(run, Request(cap, 4, 16, 16), clip, 0.5)
    out = sample(run, [zero, one, half, Request(cap, 4, 16, 16)], steps=3, seed=0)
    assert np.array_equal(out[0], clip)
    plain = sample(run, [Request(cap, 4, 16, 16)], steps=3, seed=1)[0]  # request 1's seed, no condition
    assert np.array_equal(out[1], plain)
    assert not np.array_equal(out[2], clip) and not np.array_equal(out[2], out[1])


def test_conditions_are_resized_keeping_aspect_or_refused_in_one_line(run):
    frame = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    assert P.fit_frames(frame, 16, 16, patch_hw=(4, 4)) is frame  # the same size: untouched
    up = P.fit_frames(frame, 32, 32, patch_hw=(4, 4))
    assert up.shape == (1, 32, 32, 3)
    wide = np.zeros((1, 30, 64, 3), np.uint8)
    assert P.fit_frames(wide, 16, 32, patch_hw=(4, 4)).shape == (1, 16, 32, 3)  # 15x32 -> crop < one patch
    with pytest.raises(ValueError, match=r"cannot fill 16x16 keeping its aspect.*--size 16x36") as e:
        P.fit_frames(np.zeros((1, 30, 64, 3), np.uint8), 16, 16, patch_hw=(4, 4), what="the image")
    assert "\n" not in str(e.value)
    clip, cap = _clip(4, 16, 16)
    with pytest.raises(ValueError, match="one temporal patch"):
        P.image(run, Request(cap, 2, 16, 16), clip[:1])
    with pytest.raises(ValueError, match="connecting needs 3"):
        P.connect(run, Request(cap, 4, 16, 16), clip, clip)
    with pytest.raises(ValueError, match="cannot fit whole temporal patches"):
        P.extend(run, Request(cap, 0, 16, 16), clip[:1], 1)
    with pytest.raises(ValueError, match="--video and --extend"):
        P.with_condition(run, [Request(cap, 4, 16, 16)], extend_by=4)
    with pytest.raises(ValueError, match="one of --image"):
        P.with_condition(run, [Request(cap, 4, 16, 16)], image_path="a.png", edit_path="b.mp4", strength=0.5)


def test_manifest_says_what_was_given(run, tmp_path):
    from patchpack.train.apps.generate import write_outputs

    reqs = _modes(run, 16, 16)[:2]
    manifest = write_outputs(tmp_path, reqs, sample(run, reqs, steps=1), fps=run.fps)
    assert manifest["items"][0]["condition"] == {"mode": "image", "given": [0, 1], "strength": None}
    assert manifest["items"][1]["condition"]["given"] == [0, 1, 2, 3, 4, 5]


def test_latent_given_frames_are_encoded_as_the_clip_holds_them(tmp_path):
    """Causal VAE (ft = 2): a given prefix is exactly the whole clip's leading latent frames."""
    from types import SimpleNamespace

    from patchpack.model.vae import CausalVAE, VAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(spatial=2, temporal=2, widths=[8], latent_channels=4)).eval()
    run = SimpleNamespace(vae=vae, patch=(1, 1, 1), fps=8.0)
    clip, cap = _clip(9, 8, 8)
    given = P.extend(run, Request(cap, 0, 8, 8), clip[:5], 4)  # 5 + 4 = 9 frames: latent 0..2 given of 0..4
    assert given.frames == 9 and given.condition.given.tolist() == [True] * 5 + [False] * 4
    cond = model_condition(run, given.condition)
    assert cond.given.tolist() == [True, True, True, False, False]
    whole = vae.encode(torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1)
    torch.testing.assert_close(cond.video[:, :3], whole[:, :3], rtol=1e-4, atol=1e-5)
    assert P.patch_frames(run, 9) == [range(0, 1), range(1, 3), range(3, 5), range(5, 7), range(7, 9)]
    back = model_condition(run, P.extend(run, Request(cap, 0, 8, 8), clip[:4], 5, backward=True).condition)
    assert back.given.tolist() == [False, False, False, True, True]  # frames 5..8 = latent frames 3, 4


def test_the_demo_row_prompts_every_mode_and_measures_it_against_a_baseline(run):
    from patchpack.train.apps.prompted_row import MODES, format_continuation, prompted_row

    captions = ["a circle in red moving left fast on a black background",
                "a square in blue moving up slowly on a gray background"]
    row = prompted_row(run, side=16, frames=4, captions=captions, steps=1, cfg_scale=2.0, seed=0)
    assert len(row.reqs) == len(row.videos) == len(row.notes) == 12
    assert [r.frames for r in row.reqs[:6]] == [4, 4, 8, 4, 4, 8]
    for mode in MODES:
        assert row.report[mode]["items"] == 2 and row.report[f"{mode} (text-only baseline)"]["items"] == 2
    table = format_continuation(row.report)
    assert table.splitlines()[0].split()[:2] == ["mode", "items"] and len(table.splitlines()) == 1 + 2 * len(MODES)
