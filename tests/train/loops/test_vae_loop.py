"""VAE training: a short run writes checkpoints, metrics, an export and a PSNR report; resume is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from patchpack.model.vae import load_vae, psnr
from patchpack.train.loops.checkpoint import list_checkpoints
from patchpack.train.loops.metrics import read_metrics
from patchpack.train.loops.vae_config import VAETrainConfig
from patchpack.train.loops.vae_loop import synth_eval_videos, train_vae, vae_psnr_report
from patchpack.train.options import load_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from patchpack.train.data.synth import synth

    out = tmp_path_factory.mktemp("synth")
    synth(out, num_samples=6, shard_size=3, min_side=16, max_side=32, progress=False)
    return out


def _cfg(shards, run_dir, *extra) -> VAETrainConfig:
    return load_config(VAETrainConfig, None, [
        f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.max_frames=5", "data.shuffle_buffer=4",
        "vae.widths=[8,8]", "vae.latent_channels=4", "vae.temporal=4",
        "clip.max_pixels=256", "clip.max_frames=5", "loop.steps=6", "loop.accum=2", "loop.log_every=2",
        "loop.ckpt_every=2", "loop.keep=2", "loop.threads=1",
        "eval.sizes=[[1,16,16],[5,16,24]]", "eval.per_size=1", *extra])


def test_train_vae_run_and_exact_resume(shards, tmp_path):
    a = train_vae(_cfg(shards, tmp_path / "a"))
    assert a["step"] == 6 and a["stopped"] == "steps"
    ckpts = list_checkpoints(tmp_path / "a" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000006"]  # keep=2
    rows = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(math.isfinite(r["psnr"]) for r in rows)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [(r["frames"], r["height"], r["width"]) for r in report["psnr"]] == [(1, 16, 16), (5, 16, 24)]

    # the export and a training checkpoint both load; the export carries the latent scale
    export, ckpt = load_vae(tmp_path / "a" / "vae"), load_vae(ckpts[-1])
    assert export.config.latent_scale == pytest.approx(a["latent_scale"]) and ckpt.config.latent_scale == 1.0
    for name, p in ckpt.state_dict().items():
        assert torch.equal(p, export.state_dict()[name]), name

    # resume from step 4 in another run dir: the same weights at step 6, bit for bit
    b = train_vae(_cfg(shards, tmp_path / "b", f"loop.resume={ckpts[0]}"))
    assert (b["start_step"], b["step"]) == (4, 6)
    resumed = load_vae(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    for name, p in resumed.state_dict().items():
        assert torch.equal(p, ckpt.state_dict()[name]), name


def test_config_errors(shards, tmp_path):
    with pytest.raises(ValueError, match="T=4"):
        train_vae(_cfg(shards, tmp_path, "eval.sizes=[[4,16,16]]"))
    with pytest.raises(ValueError, match="accum"):
        train_vae(_cfg(shards, tmp_path, "loop.accum=0"))


def test_psnr_report_groups_by_size():
    from patchpack.model.vae import CausalVAE, VAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(temporal=4, widths=[8, 8])).eval()
    videos = synth_eval_videos([[1, 16, 16], [5, 8, 24], [1, 16, 16]], per_size=2, seed=3)
    assert [tuple(v.shape) for v in videos[:4]] == [(3, 1, 16, 16)] * 2 + [(3, 5, 8, 24)] * 2
    report = vae_psnr_report(vae, videos)
    assert [(r["frames"], r["height"], r["width"], r["clips"]) for r in report] == [(1, 16, 16, 4), (5, 8, 24, 2)]
    one = vae_psnr_report(vae, videos[2:4])[0]["psnr"]
    mse = sum(float((vae.decode(vae.encode(v)) - v).pow(2).mean()) for v in videos[2:4]) / 2
    assert one == pytest.approx(10 * math.log10(4 / mse), abs=0.01)
    assert vae_psnr_report(vae, videos[2:3], chunk=1)[0]["psnr"] == pytest.approx(psnr(vae.decode(vae.encode(videos[2])), videos[2]), abs=0.01)


def test_eval_videos_shapes_only():
    """photos=False: every held-out clip is a flat shape on a plain background (two colours
    per frame); the default alternates shapes and photo pans."""
    plain = synth_eval_videos([[1, 24, 24]], per_size=6, seed=3, photos=False, digit_fraction=0.0,
                              object_scale=(0.5, 0.6))
    mixed = synth_eval_videos([[1, 24, 24]], per_size=6, seed=3)
    colours = lambda v: len(torch.unique(v[:, 0].flatten(1), dim=1).T)  # noqa: E731
    assert all(colours(v) == 2 for v in plain)
    assert max(colours(v) for v in mixed) > 10  # a photo among them: the knob is not vacuous


def test_demo_config_builds_and_fits_its_eval_sizes():
    from pathlib import Path

    from patchpack.model.vae import CausalVAE

    path = Path(__file__).resolve().parents[3] / "configs" / "vae_demo.yaml"
    cfg = load_config(VAETrainConfig, str(path), [])
    assert cfg.vae.shortcuts and cfg.vae.widths[-1] % cfg.vae.latent_channels == 0
    vae = CausalVAE(cfg.vae).eval()
    for t, h, w in cfg.eval.sizes:  # every report size is a valid input
        assert vae.config.latent_shape(t, h, w)[0] == 1 + (t - 1) // cfg.vae.temporal
    x = torch.zeros(3, 1 + cfg.vae.temporal, 8, 8)
    assert vae.decode(vae.encode(x)).shape == x.shape
