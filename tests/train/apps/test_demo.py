"""The demo's honesty and plumbing: held-out prompts never in its data, balanced subjects,
sizes the VAE and patch accept, --minutes, reference clips and the noise measure."""

from __future__ import annotations

import json
import random
import tarfile

import numpy as np
import pytest

from patchpack.model.vae import VAEConfig
from patchpack.train.apps.demo import (
    DemoOptions,
    demo_sizes,
    demo_subjects,
    held_out_prompts,
    prompt_for,
    train_steps,
    write_data,
)
from patchpack.train.apps.evaluate import score
from patchpack.train.apps.reference import hf_energy, reference_clip
from patchpack.train.data.synth import BACKGROUNDS, COLOURS, SHAPES, make_sample


def test_subjects_are_balanced_distinct_and_seeded():
    subjects = demo_subjects(8, seed=0)
    assert subjects == demo_subjects(8, seed=0) and subjects != demo_subjects(8, seed=1)
    assert {s["obj"] for s in subjects} == set(SHAPES) and {s["background"] for s in subjects} == set(BACKGROUNDS)
    assert {s["colour"] for s in subjects} == set(COLOURS)  # 8 prompts show all 6 colours
    assert len({prompt_for(s, 9) for s in subjects}) == 8 and len({prompt_for(s, 1) for s in subjects}) == 8


def test_held_out_prompts_are_not_in_the_demo_data(tmp_path):
    opts = DemoOptions(num_samples=300, min_side=32, max_side=48)
    subjects = demo_subjects(opts.prompts, opts.seed)
    held_out = held_out_prompts(subjects)
    assert len(held_out) == 2 * opts.prompts  # clip and image captions
    write_data(opts, tmp_path / "data", subjects)
    captions = []
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        with tarfile.open(shard) as tf:
            captions += [json.loads(tf.extractfile(m).read())["caption"] for m in tf if m.name.endswith(".json")]
    assert len(captions) == 300 and not set(captions) & held_out
    # guard: the same draws without the exclusion do hit held-out captions
    rng = random.Random(opts.seed)
    drawn = [make_sample(rng, photo_fraction=0.0, min_side=32, max_side=48, digit_fraction=0.0,
                         object_scale=opts.object_scale)[1] for _ in range(300)]
    assert set(drawn) & held_out


def test_sizes_fit_the_vae_and_the_patch():
    vae = VAEConfig(latent_channels=16, spatial=4, temporal=4, widths=[16, 32])
    sizes = demo_sizes(32, 9, unit=8, temporal=4)
    assert [s[:3] for s in sizes] == [(9, 32, 32), (1, 32, 32), (17, 32, 32), (9, 24, 72), (9, 40, 40)]
    for t, h, w, _ in sizes:
        lt, lh, lw = vae.latent_shape(t, h, w)
        assert lh % 2 == 0 and lw % 2 == 0  # patch (1, 2, 2) on the latent
    assert [tag.split(":")[0].split(" (")[0] for *_, tag in sizes] == [
        "trained size", "trained size", "unseen duration", "unseen aspect 3", "unseen resolution"]
    # a temporal patch of 3 latent frames: the longer clip is whole patches (6 latent frames)
    (_, _, _, _), (_, _, _, _), (t3, *_), *_ = demo_sizes(32, 9, unit=8, temporal=4, pt=3)
    assert t3 == 21 and vae.latent_shape(t3, 32, 32)[0] % 3 == 0
    # unseen means no training clip has it: training latents come from clips fitted to
    # <= clip_frames frames and <= clip_pixels pixels at aspects up to 21:9
    opts = DemoOptions()
    for t, h, w, tag in sizes:
        beyond = t > opts.clip_frames or h * w > opts.clip_pixels
        assert beyond == tag.startswith("unseen"), (t, h, w, tag)


def test_minutes_set_the_steps():
    assert train_steps(DemoOptions()) is None
    assert train_steps(DemoOptions(minutes=15, steps_per_minute=150, fixed_minutes=3)) == 1800
    assert train_steps(DemoOptions(minutes=60, steps_per_minute=150, fixed_minutes=3)) == 8550
    with pytest.raises(ValueError, match="no time to train"):
        train_steps(DemoOptions(minutes=2))


@pytest.mark.parametrize("caption, frames, size", [
    ("a circle in red moving left fast on a black background", 9, (32, 32)),
    ("a triangle in yellow moving up slowly on a gray background", 17, (24, 72)),
    ("a square in blue on a dark blue background", 1, (40, 40)),
])
def test_reference_clips_show_their_caption(caption, frames, size):
    clip = reference_clip(caption, frames, *size, seed=3, object_scale=(0.4, 0.55))
    assert clip.shape == (frames, *size, 3) and clip.dtype == np.uint8
    assert all(score(clip, caption).values())
    assert np.array_equal(clip, reference_clip(caption, frames, *size, seed=3, object_scale=(0.4, 0.55)))
    with pytest.raises(ValueError, match="not a synth shape caption"):
        reference_clip("a photo of a cat", 1, 32, 32, seed=0)


def test_hf_energy_separates_noise_from_clean_clips():
    clean = reference_clip("a circle in red moving left fast on a black background", 9, 32, 32, seed=0)
    noisy = np.clip(clean.astype(int) + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    flat = np.full_like(clean, 128)
    assert hf_energy(flat) == 0.0
    assert 0 < hf_energy(clean) < 10 < 3 * hf_energy(clean) < hf_energy(noisy)


def test_the_shipped_vae_is_the_committed_configs_and_installs_with_the_package():
    """model/assets/vae_demo: found through the installed package, built by
    configs/vae_demo_shapes.yaml's model (only latent_scale set at export), and listed as
    package data so a non-editable install carries it."""
    from dataclasses import replace
    from pathlib import Path

    from patchpack.model.vae import load_vae
    from patchpack.train.apps.demo import demo_vae_path, shipped_vae
    from patchpack.train.loops import VAETrainConfig
    from patchpack.train.options import load_config

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[3]
    path = demo_vae_path(None)
    assert path == shipped_vae() and (path / "model.safetensors").stat().st_size < 4 << 20  # a few MB at most
    vae = load_vae(path)
    cfg = load_config(VAETrainConfig, str(root / "configs" / "vae_demo_shapes.yaml"), [])
    assert replace(vae.config, latent_scale=1.0) == replace(cfg.vae, latent_scale=1.0)
    assert cfg.vae.rgb_shortcut and 0 < vae.config.latent_scale < 1
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "assets/vae_demo/*" in data["patchpack.model"]
    with pytest.raises(ValueError, match="no exported VAE"):
        demo_vae_path(str(root / "configs"))
