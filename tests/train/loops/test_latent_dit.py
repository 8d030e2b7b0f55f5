"""The DiT in a VAE's latent space, end to end: latent shards -> train -> load -> generate decodes to pixels."""

from __future__ import annotations

import pytest
import torch

from patchpack.model.vae import CausalVAE, VAEConfig, save_vae
from patchpack.train.apps.generate import load_run, model_grids, requests, sample
from patchpack.train.data.config import DataConfig
from patchpack.train.data.latent_shards import encode_latent_shards
from patchpack.train.data.synth import synth
from patchpack.train.loops import dit_loop as trainer
from patchpack.train.loops.config import TrainConfig
from patchpack.train.options import load_config

pytest.importorskip("av")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latent")
    synth(root / "px", num_samples=6, seed=0, shard_size=6, max_side=48, min_side=32, progress=False)
    torch.manual_seed(0)
    save_vae(CausalVAE(VAEConfig(spatial=4, temporal=4, widths=[8, 8], latent_channels=6)).eval(), root / "vae")
    encode_latent_shards(str(root / "px"), root / "vae", root / "lat", data=DataConfig(fps=8.0, max_frames=9),
                         max_pixels=32 * 32, progress=False)
    cfg = load_config(TrainConfig, None, [
        f"run_dir={root / 'run'}", f"data.shards=[{root / 'lat'}]", f"vae={root / 'vae'}", "data.shuffle_buffer=2",
        "packer.patch=[1,2,2]", "packer.max_len=64", "packer.rows=1", "packer.max_tokens_per_sample=48",
        "packer.buffer=2", "model.depth=1", "model.hidden=32", "model.heads=2", "model.attn_backend=cpu",
        "optim.warmup=1", "loop.steps=2", "loop.threads=1",
    ])
    summary = trainer.train(cfg)
    return root, summary


def test_the_dit_trains_on_latent_tokens(latent_run):
    root, summary = latent_run
    assert summary["step"] == 2 and summary["loss"] == summary["loss"]  # finite: not NaN
    run = load_run(root / "run")
    assert run.vae is not None and run.model.config.in_channels == 6  # the VAE's latent channels
    assert run.model.config.patch_dim == 6 * 4


def test_generate_asks_for_pixels_and_gets_pixels(latent_run):
    root, _ = latent_run
    run = load_run(root / "run")
    reqs = requests(["a red circle moving left fast on a black background"], sizes=[(16, 24), (16, 16)], frames=[5, 1])
    assert model_grids(run, reqs, max_tokens=1000) == [(2, 4, 6), (1, 4, 4)]  # latent frames and rows
    videos = sample(run, reqs, steps=2)
    assert [v.shape for v in videos] == [(5, 16, 24, 3), (1, 16, 16, 3)]
    with pytest.raises(ValueError, match="T=4"):
        sample(run, requests(["x"], sizes=[(16, 16)], frames=[4]), steps=1)  # not 1 + k*4 frames
    with pytest.raises(ValueError, match="multiples of spatial=4"):
        sample(run, requests(["x"], sizes=[(18, 16)], frames=[1]), steps=1)
