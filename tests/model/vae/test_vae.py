"""The causal VAE: causality, shape rules, chunked == whole, overfitting a tiny clip."""

from __future__ import annotations

import pytest
import torch

from patchpack.model.autoencoder import Autoencoder
from patchpack.model.vae.loss import psnr, ssim, vae_loss
from patchpack.model.vae.model import CausalVAE, VAEConfig


def _vae(**kw) -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(VAEConfig(**{"widths": [8, 16], "latent_channels": 4, **kw})).eval()


def _video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_is_an_autoencoder():
    assert isinstance(_vae(), Autoencoder)


@pytest.mark.parametrize("shortcuts", [False, True])
@pytest.mark.parametrize("temporal,spatial,widths", [(1, 4, [8, 16]), (4, 4, [8, 16]), (4, 8, [8, 8, 16])])
def test_causal_latent_frames_ignore_later_frames(temporal, spatial, widths, shortcuts):
    vae = _vae(temporal=temporal, spatial=spatial, widths=widths, shortcuts=shortcuts)
    x = _video(1 + 3 * temporal, 16, 24)
    z = vae.encode(x)
    for k in range(z.shape[1] - 1):
        y = x.clone()
        y[:, k * temporal + 1 :] = _video(x.shape[1] - k * temporal - 1, 16, 24, seed=k + 1)  # frames after k's
        zy = vae.encode(y)
        assert torch.equal(zy[:, : k + 1], z[:, : k + 1]), f"latent frames <= {k} moved"
        assert not torch.allclose(zy[:, k + 1 :], z[:, k + 1 :]), "later latent frames should move (non-vacuous)"
    # the decoder is causal too: output frames of latent frames <= k ignore later latents
    zz = z.clone()
    zz[:, 2:] += 1.0
    out, out2 = vae.decode(z), vae.decode(zz)
    n = 1 + temporal  # frames made by latent frames 0 and 1
    assert torch.equal(out[:, :n], out2[:, :n]) and not torch.equal(out[:, n:], out2[:, n:])


@pytest.mark.parametrize("t,h,w", [(1, 16, 16), (1, 4, 12), (5, 8, 20), (9, 12, 4)])
def test_shapes_for_images_and_odd_sizes(t, h, w):
    vae = _vae(temporal=4)
    z = vae.encode(_video(t, h, w))
    assert tuple(z.shape) == (4, 1 + (t - 1) // 4, h // 4, w // 4)
    assert tuple(vae.decode(z).shape) == (3, t, h, w)


@pytest.mark.parametrize("t,h,w", [(4, 16, 16), (2, 16, 16), (5, 18, 16), (5, 16, 10), (0, 16, 16)])
def test_bad_sizes_name_the_sizes(t, h, w):
    vae = _vae(temporal=4)
    with pytest.raises(ValueError, match=rf"T={t}|{h} x {w}"):
        vae.encode(torch.zeros(3, t, h, w))


def test_bad_configs():
    with pytest.raises(ValueError, match="widths"):
        VAEConfig(spatial=8, widths=[8, 16])
    with pytest.raises(ValueError, match="spatial=3"):
        VAEConfig(spatial=3)
    with pytest.raises(ValueError, match="temporal=4"):
        VAEConfig(spatial=2, temporal=4, widths=[8])


@pytest.mark.parametrize("temporal", [1, 4])
@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("shortcuts", [False, True])
def test_chunked_equals_whole(temporal, chunk, shortcuts):
    vae = _vae(temporal=temporal, shortcuts=shortcuts)
    x = _video(1 + 6 * temporal if temporal > 1 else 7, 8, 12)
    z = vae.encode(x)
    zc = vae.encode(x, chunk=chunk)
    torch.testing.assert_close(zc, z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae.decode(z, chunk=chunk), vae.decode(z), rtol=1e-5, atol=1e-5)
    # the caches are cleared after a chunked call: a whole call still gives the same
    torch.testing.assert_close(vae.encode(x), z, rtol=0, atol=0)


def test_shortcuts_alone_are_mean_down_and_nearest_up():
    """With every conv zeroed (enc_in the identity), the shortcuts alone are what the convs
    learn a residual over: the latent is the 4x4 mean of the frames the temporal stride
    keeps (one channel per latent group here), and the decoder copies it back."""
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(channels=4, latent_channels=4, temporal=4, widths=[4, 4], shortcuts=True)).eval()
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
                m.weight.zero_()
                m.bias.zero_()
        # enc_in / dec_out are plain convs: make them the identity on the 4 channels
        vae.enc_in.conv.weight[:, :, -1, 1, 1] = torch.eye(4)
        vae.dec_out.conv.weight[:, :, -1, 1, 1] = torch.eye(4)
    x = torch.rand(4, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    z = vae.encode(x)  # frames 0, 4, 8, each 4x4-averaged
    want = torch.nn.functional.avg_pool2d(x[:, ::4], 4)
    torch.testing.assert_close(z, want)
    # the decoder (before its output norm) repeats each latent frame over the frames it
    # stands for, and each latent pixel 4x4
    seen = []
    vae.dec_norm.register_forward_hook(lambda mod, args, out: seen.append(args[0][0]))
    vae.decode(z)
    up = z.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # (4, 3, 8, 8)
    want = torch.cat([up[:, :1], up[:, 1:2].expand(-1, 4, -1, -1), up[:, 2:3].expand(-1, 4, -1, -1)], dim=1)
    torch.testing.assert_close(seen[0], want)


def test_rgb_shortcut_makes_the_untrained_vae_a_plain_resampler():
    """rgb_shortcut: the freshly built VAE (the demo VAE's shape, widths [16, 32], 16 latent
    channels) is a 4x4 mean down and a copy up of the RGB clip, so a clip constant on 4x4
    blocks and on each latent frame's group of frames comes back exactly, every colour
    channel included; training then learns a residual over that."""
    vae = _vae(latent_channels=16, temporal=4, widths=[16, 32], shortcuts=True, rgb_shortcut=True)
    g = torch.Generator().manual_seed(2)
    blocks = torch.rand(3, 3, 2, 3, generator=g) * 2 - 1  # 3 latent frames of 2x3 latent pixels
    x = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # (3, 3, 8, 12)
    x = torch.cat([x[:, :1], x[:, 1:2].expand(-1, 4, -1, -1), x[:, 2:3].expand(-1, 4, -1, -1)], dim=1)  # 9 frames
    torch.testing.assert_close(vae.decode(vae.encode(x)), x)
    torch.testing.assert_close(vae.encode(x, chunk=1), vae.encode(x))
    # guard: without it the same VAE is no resampler at init
    other = _vae(latent_channels=16, temporal=4, widths=[16, 32], shortcuts=True)
    assert (other.decode(other.encode(x)) - x).abs().max() > 0.1
    with pytest.raises(ValueError, match="rgb_shortcut needs shortcuts"):
        VAEConfig(rgb_shortcut=True)


def test_shortcuts_need_divisible_widths():
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(widths=[8, 12], latent_channels=8, shortcuts=True)


def test_latent_scale_scales_the_latent_and_its_inverse():
    vae = _vae()
    x = _video(1, 8, 8)
    z, out = vae.encode(x), vae.decode(vae.encode(x))
    vae.config.latent_scale = 0.5
    torch.testing.assert_close(vae.encode(x), 0.5 * z)
    torch.testing.assert_close(vae.decode(0.5 * z), out)


def test_ssim_and_psnr_sanity():
    x = _video(2, 16, 16)
    assert float(ssim(x[None], x[None])) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(ssim(x[None], _video(2, 16, 16, seed=9)[None]))) < 0.1  # independent noise
    assert psnr(x, x) == float("inf")
    x = 0.5 * x  # inside [-1, 1] after the shift: psnr clamps its first argument
    assert psnr(x + 0.02, x) == pytest.approx(10 * torch.log10(torch.tensor(4 / 0.02**2)).item(), rel=1e-3)


def _tiny_clip() -> torch.Tensor:
    x = -torch.ones(3, 5, 16, 16)
    for t in range(5):  # a red square moving right, a fading blue bar
        x[0, t, 4:10, 2 + t : 8 + t] = 0.8
        x[2, t, 8:14, 8:12] = 0.3 - 0.1 * t
    return x


def _overfit(steps: int, temporal: int) -> float:
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(temporal=temporal, widths=[16, 32], latent_channels=8))
    x = _tiny_clip()[:, : 5 if temporal == 4 else 3]
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for _ in range(steps):
        out = vae(x[None], sample=False)
        loss = vae_loss(out.recon, x[None], out.mean, out.logvar, ssim_weight=0.2, kl_weight=1e-6).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    return psnr(vae.decode(vae.encode(x)), x)


def test_overfit_tiny_clip_fast():
    start = _overfit(0, temporal=4)
    assert _overfit(150, temporal=4) > max(22.0, start + 10.0)


@pytest.mark.slow
def test_overfit_tiny_clip_high_psnr():
    assert _overfit(400, temporal=4) > 30.0


def test_checkpoint_round_trip_and_pickle_refusal(tmp_path):
    from patchpack.model.vae.checkpoint import load_vae, save_vae

    vae = _vae(temporal=4)
    vae.config.latent_scale = 0.7
    save_vae(vae, tmp_path / "vae")
    back = load_vae(tmp_path / "vae")
    assert back.config == vae.config and not back.training
    x = _video(5, 8, 8)
    assert torch.equal(back.encode(x), vae.encode(x))
    torch.save(vae.state_dict(), tmp_path / "vae" / "model.safetensors")
    with pytest.raises(ValueError, match="refusing"):
        load_vae(tmp_path / "vae")


@pytest.mark.parametrize("size,kw,want", [
    ((7, 30, 45), {}, (5, 28, 44)),
    ((48, 144, 256), {"max_pixels": 64 * 64, "max_frames": 17}, (17, 48, 84)),
    ((1, 16, 16), {"max_pixels": 1}, (1, 4, 4)),
])
def test_fit_to_vae_sizes(size, kw, want):
    from patchpack.model.vae.fit import fit_to_vae

    cfg = VAEConfig(temporal=4, widths=[8, 16])
    out = fit_to_vae(torch.zeros(3, *size), config=cfg, **kw)
    assert tuple(out.shape[1:]) == want
    cfg.latent_shape(*want)  # accepted


def test_conv2d_fast_path_matches_conv3d_reference():
    from patchpack.model.vae.blocks import CausalConv3d

    vae = _vae(temporal=4)
    x = _video(9, 12, 20)
    z, y = vae.encode(x), vae.decode(vae.encode(x))
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d)]
    assert len(convs) > 10
    for m in convs:
        m.reference = True
    torch.testing.assert_close(vae.encode(x), z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae.decode(z), y, rtol=1e-4, atol=1e-5)


def test_generate_decodes_latents_through_a_loaded_vae(tmp_path):
    from dit_testing import StubTextEncoder, random_dit

    from patchpack.model import generate
    from patchpack.model.vae.checkpoint import load_vae, save_vae

    save_vae(_vae(temporal=4), tmp_path / "vae")
    vae = load_vae(tmp_path / "vae")
    model = random_dit(in_channels=4)  # the DiT diffuses the VAE's 4 latent channels
    grids = [(1, 4, 6), (3, 4, 4)]  # latent units: an image and 1 + 2 latent frames
    videos = generate(model, StubTextEncoder(), ["a", "b"], grids, steps=2, cfg_scale=1.0, autoencoder=vae)
    assert [tuple(v.shape) for v in videos] == [(3, 1, 16, 24), (3, 9, 16, 16)]
    assert all(v.abs().max() <= 1.0 for v in videos)
