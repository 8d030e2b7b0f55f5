"""Every numeric input has a range check and a clear error (issue 15, item 7): config fields,
library arguments of the training side, and the guidance scale that turned videos black."""

from __future__ import annotations

import math

import pytest
from dit_testing import StubTextEncoder, random_dit

from patchpack.model import generate
from patchpack.train.apps.demo import DemoOptions
from patchpack.train.apps.generate import Request, sample
from patchpack.train.data import DataConfig
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.vae_config import VAETrainConfig
from patchpack.train.options import ConfigError, load_config

BAD_TRAIN = [
    ("packer.max_len=-5", "max_len"), ("loop.steps=0", "loop.steps"), ("optim.lr=-1", "optim.lr"),
    ("optim.lr=nan", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.weight_decay=-0.1", "weight_decay"), ("optim.warmup=-1", "warmup"),
    ("optim.min_lr_ratio=2", "min_lr_ratio"), ("optim.grad_clip=nan", "grad_clip"), ("loop.time_limit=-5", "time_limit"),
    ("loop.time_limit=nan", "time_limit"), ("loop.keep=0", "loop.keep"), ("loop.threads=0", "loop.threads"),
    ("loop.ema_decay=1.0", "ema_decay"), ("loop.caption_dropout=1.5", "caption_dropout"),
    ("loop.num_workers=-1", "num_workers"), ("loop.max_nonfinite=0", "max_nonfinite"),
    ("data.fps=0", "fps"), ("data.fps=nan", "fps"), ("data.max_seconds=inf", "max_seconds"),
    ("data.max_pixels=0", "max_pixels"), ("data.max_frames=0", "max_frames"), ("data.stride=0", "stride"),
    ("data.max_skips_in_a_row=0", "max_skips_in_a_row"), ("data.shuffle_buffer=-1", "shuffle_buffer"),
    ("flow.logit_std=nan", "logit_std"), ("flow.logit_mean=inf", "logit_std"), ("model.mlp_ratio=nan", "mlp_ratio"),
    ("model.rope_theta=-1", "rope_theta"), ("packer.max_shrink=nan", "max_shrink"), ("packer.drop_rate=nan", "drop_rate"),
]


@pytest.mark.parametrize("override, name", BAD_TRAIN)
def test_train_config_refuses_out_of_range_values_by_name(override, name):
    with pytest.raises(ConfigError, match=name):
        load_config(TrainConfig, None, [override])


@pytest.mark.parametrize("override, name", [
    ("loop.accum=0", "accum"), ("clip.max_pixels=0", "max_pixels"), ("clip.max_frames=0", "max_frames"),
    ("loss.ssim_weight=-1", "ssim_weight"), ("eval.per_size=0", "per_size"), ("eval.sizes=[[1,0,8]]", "eval.sizes"),
    ("vae.kl_weight=nan", "kl_weight"), ("vae.latent_scale=0", "latent_scale"), ("optim.lr=0", "optim.lr"),
])
def test_vae_config_refuses_out_of_range_values_by_name(override, name):
    with pytest.raises(ConfigError, match=name):
        load_config(VAETrainConfig, None, [override])


@pytest.mark.parametrize("field, value", [("max_frames", 2.5), ("epochs", 0), ("seed", 1.5), ("stride", True)])
def test_data_config_refuses_non_integers(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


@pytest.mark.parametrize("cfg", [math.nan, math.inf, -math.inf])
def test_a_nan_or_infinite_guidance_scale_is_refused_not_sampled_black(cfg):
    model = random_dit("reference", depth=1)
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(model, StubTextEncoder(), ["x"], [(1, 4, 4)], steps=1, cfg_scale=cfg)
    with pytest.raises(ValueError, match="cfg_scale"):
        sample(None, [Request("x", 1, 4, 4)], steps=1, cfg_scale=cfg)


@pytest.mark.parametrize("kw, name", [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"seed": 1.5}, "seed"),
                                      ({"max_tokens": 0}, "max_tokens")])
def test_sample_refuses_bad_counts(kw, name):
    with pytest.raises(ValueError, match=name):
        sample(None, [Request("x", 1, 4, 4)], **kw)


@pytest.mark.parametrize("kw", [{"prompts": 0}, {"sample_steps": 0}, {"num_samples": -1}, {"cfg_scale": math.nan}])
def test_demo_options_are_checked_before_any_stage_runs(kw):
    with pytest.raises(ValueError):
        DemoOptions(**kw)


def test_encode_latents_refuses_bad_counts_before_any_work(tmp_path):
    from patchpack.train.data.latent_shards import encode_latent_shards

    for kw, name in (({"max_pixels": 0}, "max_pixels"), ({"shard_size": 0}, "shard_size"),
                     ({"chunk": 0}, "chunk"), ({"threads": 0}, "threads"), ({"max_frames": 1.5}, "max_frames")):
        with pytest.raises(ValueError, match=name):
            encode_latent_shards(str(tmp_path), tmp_path / "no-vae", tmp_path / "out", progress=False, **kw)
