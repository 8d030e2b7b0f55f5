"""Latent shards: encode -> write -> stream reads back the same latents; the packer patchifies them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchpack.model.vae import CausalVAE, VAEConfig, fit_to_vae, save_vae
from patchpack.packer import PackerConfig, patchify
from patchpack.train.data.config import DataConfig
from patchpack.train.data.latent_shards import encode_latent_shards
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.packed_stream import PackedStream, VideoStream
from patchpack.train.data.shards import ShardWriter

SIZES = [(1, 16, 24), (9, 16, 16), (6, 24, 16), (1, 32, 8), (5, 8, 16)]  # (T, H, W); 6 frames -> 5


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "px", max_count=3) as w:
        for i, (t, h, w_) in enumerate(SIZES):
            frames = rng.integers(0, 255, (t, h, w_, 3), dtype=np.uint8)
            media = {"png": encode_image(frames[0])} if t == 1 else {"mp4": encode_mp4(frames, fps=8)}
            meta = {"caption": [f"clip {i}", f"another {i}"], "attrs": {"i": i}}
            w.write(f"k{i:03d}", media | {"json": json.dumps(meta).encode()})
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(temporal=4, widths=[8, 8], latent_channels=6, latent_scale=0.5)).eval()
    save_vae(vae, tmp_path / "vae")
    data = DataConfig(fps=None, max_frames=None, max_seconds=None)
    summary = encode_latent_shards(str(tmp_path / "px"), tmp_path / "vae", tmp_path / "lat", data=data,
                                   shard_size=2, progress=False)
    return tmp_path, vae, data, summary


def _read(path, data, **kw) -> dict:
    cfg = DataConfig(shards=[str(path)], epochs=1, shuffle_buffer=0, shuffle_shards=False, fps=data.fps,
                     max_frames=data.max_frames, max_seconds=data.max_seconds, clip_start="first", **kw)
    return {key.split("/")[1]: (video, meta) for key, video, meta in VideoStream(cfg)}


def test_latent_shards_round_trip(setup):
    tmp, vae, data, summary = setup
    assert summary["written"] == len(SIZES) and summary["skipped"] == {} and len(summary["shards"]) == 3
    pixels, latents = _read(tmp / "px", data), _read(tmp / "lat", data)
    assert sorted(latents) == sorted(pixels) == [f"k{i:03d}" for i in range(len(SIZES))]
    for key, (video, _) in pixels.items():
        want = vae.encode(fit_to_vae(video, config=vae.config))  # what the VAE gives on the stream's decode
        got, meta = latents[key]
        assert torch.equal(got, want), key
        t = 1 + (video.shape[1] - 1) // 4 * 4
        assert meta["latent"] == [1 + (t - 1) // 4, video.shape[2] // 4, video.shape[3] // 4]
        assert (meta["frames"], meta["height"], meta["width"]) == (t, *video.shape[2:])
        assert meta["caption"] in (f"clip {int(key[1:])}", f"another {int(key[1:])}")
        assert meta["attrs"] == {"i": int(key[1:])}


def test_packed_stream_over_latent_shards(setup):
    tmp, vae, data, _ = setup
    latents = _read(tmp / "lat", data)
    patch = (1, 2, 2)
    cfg = DataConfig(shards=[str(tmp / "lat")], epochs=1, shuffle_buffer=0, shuffle_shards=False)
    packer = PackerConfig(patch=patch, max_len=16, rows=2, buffer=4)
    batches = list(PackedStream(cfg, packer))
    d = vae.config.latent_channels * 4
    assert batches and all(b.tokens.shape[-1] == d for b in batches)
    seen = {}
    for b in batches:
        for k, tok in zip(b.keys, b.split(b.tokens)):
            seen[k.split("/")[1]] = tok
    assert sorted(seen) == sorted(latents)
    for key, tok in seen.items():  # exactly the patchified latent: the packer never knew
        torch.testing.assert_close(tok, patchify(latents[key][0], patch)[0], rtol=0, atol=0)


def test_bad_latent_member_is_a_counted_skip(tmp_path):
    with ShardWriter(tmp_path, max_count=4) as w:
        w.write("bad", {"latent.safetensors": b"not safetensors", "json": b'{"caption": "x"}'})
    stream = VideoStream(DataConfig(shards=[str(tmp_path)], epochs=1, shuffle_buffer=0))
    assert list(stream) == [] and stream.skips == {"corrupt_latent": 1}
