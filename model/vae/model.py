"""A small causal 3D convolutional VAE: the video compression network under the DiT.

    video [C, T, H, W] in [-1, 1]  --encode-->  latent [L, 1 + (T-1)/ft, H/fs, W/fs]  --decode--> video

A KL-regularised autoencoder (Kingma & Welling, arXiv:1312.6114; the latent-diffusion
VAE of Rombach et al., arXiv:2112.10752) made causal in time as MAGVIT-v2
(arXiv:2310.05737) and CogVideoX (arXiv:2408.06072) do: every conv pads only on the
past, and the first frame is compressed on its own, so an image is a 1-frame video and
latent frame j depends only on input frames <= j*ft. Norms are per frame (FrameNorm) and
there is no attention, so the same weights run at any size divisible by the factors.
Optional parameter-free shortcuts around the resamplers and the latent follow DC-AE's
residual autoencoding (Chen et al., arXiv:2410.10733).

Long videos are encoded and decoded in chunks over time (`chunk` latent frames at a
time): each causal conv carries its last frames to the next chunk (vae_blocks.py), so
the chunked result equals the whole-video one up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .blocks import CausalConv3d, Downsample, FrameNorm, ResBlock, Streaming, Upsample, norm_groups

__all__ = ["VAEConfig", "CausalVAE", "VAEOutput"]


@dataclass
class VAEConfig:
    channels: int = 3  # video channels (RGB)
    latent_channels: int = 4  # L: channels of the latent the DiT diffuses
    spatial: int = 4  # fs: H and W shrink by this (4 or 8); one x2 level per factor of 2
    temporal: int = 1  # ft: frames after the first shrink by this (1 or 4); 1 = per-frame latents
    widths: list[int] = field(default_factory=lambda: [32, 64])  # conv width per level, len = log2(spatial)
    res_blocks: int = 1  # ResBlocks per level, in the encoder and the decoder
    kl_weight: float = 1e-6  # weight of KL(q(z|x) || N(0, I)) per latent element, vs the L1 per pixel
    latent_scale: float = 1.0  # encode() returns mean * latent_scale: set so the DiT sees ~unit variance
    # initial posterior log-variance (the enc_out bias). 0 (std 1) buries the early latents
    # in sampling noise; a low start trains as a near-deterministic autoencoder first and the
    # KL term widens the posterior as far as reconstruction allows.
    logvar_init: float = -6.0
    # parameter-free residual shortcuts around every resampler and the latent (DC-AE,
    # arXiv:2410.10733): 2x2 means down, nearest copies up, channel-group means into the
    # latent and channel repeats out of it. The convs then learn a residual over a plain
    # downsample/upsample instead of the resampler itself, which matters most for short
    # runs (docs/vae.md has the measurements). Needs widths[-1] % latent_channels == 0.
    shortcuts: bool = False
    # the pixels themselves on the same shortcut road (needs shortcuts): RGB tiled over the
    # stem's widths[0] channels, width-changing skips that start as channel repeats / group
    # means, and the decoder's output + the mean of its features per colour. At init the
    # whole VAE is then a plain mean-down / copy-up of the RGB clip. Without it the demo VAE
    # lost the green channel (green objects decoded as their background, yellow as orange:
    # docs/vae.md), a colour error no amount of its training fixed.
    rgb_shortcut: bool = False

    def __post_init__(self) -> None:
        self.widths = list(self.widths)
        if self.spatial not in (1, 2, 4, 8, 16):
            raise ValueError(f"spatial={self.spatial} must be a power of 2 in 1..16 (4 or 8 usually)")
        if self.temporal not in (1, 2, 4, 8):
            raise ValueError(f"temporal={self.temporal} must be 1, 2, 4 or 8")
        levels = int(math.log2(self.spatial))
        if self.temporal > max(self.spatial, 1) or (self.temporal > 1 and levels < math.log2(self.temporal)):
            raise ValueError(f"temporal={self.temporal} needs at least log2 of it spatial levels; "
                             f"spatial={self.spatial} has {levels}")
        if len(self.widths) != max(levels, 1):
            raise ValueError(f"widths={self.widths}: need {max(levels, 1)} entries (one per x2 level of "
                             f"spatial={self.spatial})")
        if self.shortcuts and self.widths[-1] % self.latent_channels:
            raise ValueError(f"shortcuts need widths[-1]={self.widths[-1]} divisible by "
                             f"latent_channels={self.latent_channels}")
        if self.rgb_shortcut and not self.shortcuts:
            raise ValueError("rgb_shortcut needs shortcuts=True (it rides on their parameter-free road)")
        if min(self.widths) < 1 or self.latent_channels < 1 or self.channels < 1 or self.res_blocks < 0:
            raise ValueError(f"widths, latent_channels, channels must be >= 1, res_blocks >= 0: {self}")
        if not (0 <= self.kl_weight < math.inf and 0 < self.latent_scale < math.inf and math.isfinite(self.logvar_init)):
            raise ValueError(f"kl_weight must be finite >= 0, latent_scale finite > 0, logvar_init finite: {self}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.spatial))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        return cls(**d)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of a (T, H, W) video, or ValueError naming the sizes that do not fit."""
        ft, fs = self.temporal, self.spatial
        if frames < 1 or (frames - 1) % ft:
            ok = ", ".join(str(1 + k * ft) for k in range(4))
            raise ValueError(f"T={frames} frames: the causal VAE needs T = 1 + k*{ft} (temporal={ft}): {ok}, ...")
        if height % fs or width % fs or height < fs or width < fs:
            raise ValueError(f"H x W = {height} x {width}: both must be positive multiples of spatial={fs}")
        return 1 + (frames - 1) // ft, height // fs, width // fs


class VAEOutput(NamedTuple):
    recon: Tensor  # (B, C, T, H, W) decoded from a posterior sample (or the mean)
    mean: Tensor  # (B, L, T', H', W')
    logvar: Tensor  # (B, L, T', H', W')


class CausalVAE(nn.Module):
    """Implements model.autoencoder.Autoencoder: encode/decode one [C, T, H, W] video."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        w, n_time = c.widths, int(math.log2(c.temporal))
        time_at = [i < n_time for i in range(c.levels)]  # compress time early: the cheap way round
        # ---------------------------------------------------------------- encoder
        self.enc_in = CausalConv3d(c.channels, w[0])
        enc: list[nn.Module] = []
        for i in range(c.levels):
            cin = w[i - 1] if i else w[0]
            enc += [ResBlock(cin if j == 0 else w[i], w[i]) for j in range(c.res_blocks)]
            if c.res_blocks == 0 and cin != w[i]:
                enc.append(ResBlock(cin, w[i]))
            enc.append(Downsample(w[i], time=time_at[i], shortcut=c.shortcuts))
        enc.append(ResBlock(w[-1], w[-1]))  # mid block at the latent resolution
        self.encoder = nn.Sequential(*enc)
        self.enc_norm = FrameNorm(norm_groups(w[-1]), w[-1])
        self.enc_out = CausalConv3d(w[-1], 2 * c.latent_channels)  # mean and log-variance
        # ---------------------------------------------------------------- decoder
        self.dec_in = CausalConv3d(c.latent_channels, w[-1])
        dec: list[nn.Module] = [ResBlock(w[-1], w[-1])]
        for i in reversed(range(c.levels)):
            dec += [ResBlock(w[i], w[i]) for _ in range(c.res_blocks)]
            dec.append(Upsample(w[i], time=time_at[i], shortcut=c.shortcuts))
            if i and w[i] != w[i - 1]:
                dec.append(ResBlock(w[i], w[i - 1]))
        self.decoder = nn.Sequential(*dec)
        self.dec_norm = FrameNorm(norm_groups(w[0]), w[0])
        self.dec_out = CausalConv3d(w[0], c.channels)
        # shortcuts: a linear read-out of the un-normalised features beside dec_out, whose
        # per-frame norm would otherwise hide each frame's mean colour and contrast
        self.dec_skip = nn.Conv3d(w[0], c.channels, 1) if c.shortcuts else None
        with torch.no_grad():
            self.enc_out.conv.bias[c.latent_channels:].fill_(c.logvar_init)
            if c.rgb_shortcut:
                self._init_as_resampler()

    def _init_as_resampler(self) -> None:
        """rgb_shortcut's start: width-changing skips as repeats (wider) or group means
        (narrower), and every conv that adds to the shortcut road zeroed (the residual
        branches' last convs, the resamplers' convs, the stem, the latent and output convs),
        so the untrained VAE is exactly a mean-down / copy-up of the RGB clip and training
        only adds to it (zero-init residuals, as adaLN-Zero in the DiT)."""
        zero = [self.enc_in.conv, self.enc_out.conv, self.dec_in.conv, self.dec_out.conv, self.dec_skip]
        for block in [*self.encoder, *self.decoder]:
            if isinstance(block, ResBlock):
                zero.append(block.conv2.conv)
                if isinstance(block.skip, nn.Conv3d):
                    _init_regroup(block.skip)
            elif isinstance(block, (Downsample, Upsample)):
                zero += [block.space.conv if isinstance(block.space, CausalConv3d) else block.space]
                zero += [block.tconv.conv] if block.tconv is not None else []
        for conv in zero:
            conv.weight.zero_()
            conv.bias.zero_()
        self.enc_out.conv.bias[self.config.latent_channels:].fill_(self.config.logvar_init)

    def _colour_index(self, width: int) -> Tensor:
        return torch.arange(width) % self.config.channels  # feature j carries colour j % C

    # ---------------------------------------------------------------- batched (training)

    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, T, H, W) -> posterior mean, logvar (B, L, T', H', W'), unscaled."""
        h = self.enc_in(x)  # (B, w[0], T, H, W)
        if self.config.rgb_shortcut:  # + the pixels, tiled over the channels
            h = h + x[:, self._colour_index(h.shape[1])]
        h = self.encoder(h)  # (B, w[-1], T', H', W')
        mean, logvar = self.enc_out(torch.nn.functional.silu(self.enc_norm(h))).chunk(2, dim=1)
        if self.config.shortcuts:  # + the mean of each group of w[-1]/L channels of h
            b, c, *thw = h.shape
            mean = mean + h.view(b, self.config.latent_channels, -1, *thw).mean(2)
        return mean, logvar.clamp(-30.0, 20.0)  # exp() stays finite

    def decode_latent(self, z: Tensor) -> Tensor:
        """(B, L, T', H', W') unscaled -> (B, C, T, H, W)."""
        h = self.dec_in(z)  # (B, w[-1], T', H', W')
        if self.config.shortcuts:  # + each latent channel repeated w[-1]/L times (the inverse of the group mean)
            h = h + z.repeat_interleave(h.shape[1] // z.shape[1], dim=1)
        h = self.decoder(h)  # (B, w[0], T, H, W)
        out = self.dec_out(torch.nn.functional.silu(self.dec_norm(h)))
        if self.config.rgb_shortcut:  # + per colour, the mean of the features that carry it
            idx = self._colour_index(h.shape[1]).to(h.device)
            out = out + torch.stack([h[:, idx == c].mean(1) for c in range(out.shape[1])], dim=1)
        return out if self.dec_skip is None else out + self.dec_skip(h)

    def forward(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> VAEOutput:
        """Training pass on (B, C, T, H, W): reparameterised posterior sample -> reconstruction."""
        self.config.latent_shape(*x.shape[2:])
        mean, logvar = self.encode_moments(x)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * noise
        return VAEOutput(self.decode_latent(z), mean, logvar)

    # ---------------------------------------------------------------- one video (Autoencoder)

    @torch.no_grad()
    def encode(self, video: Tensor, *, chunk: int | None = None) -> Tensor:
        """video [C, T, H, W] in [-1, 1] -> latent [L, T', H', W'] (posterior mean x latent_scale).

        chunk: latent frames per step (None: all at once). Peak activation memory then
        scales with `chunk * temporal` input frames instead of T.
        """
        if video.ndim != 4 or video.shape[0] != self.config.channels:
            raise ValueError(f"expected a video [C={self.config.channels}, T, H, W], got {tuple(video.shape)}")
        t = self.config.latent_shape(*video.shape[1:])[0]
        ft = self.config.temporal
        if chunk is None or chunk >= t:
            return self.encode_moments(video[None])[0][0] * self.config.latent_scale
        bounds = _chunks(t, chunk)  # latent frame ranges; input frames: 0 | 1 + a*ft .. b*ft
        with _streaming(self):
            parts = [self.encode_moments(video[None, :, 1 + (a - 1) * ft if a else 0 : 1 + (b - 1) * ft])[0]
                     for a, b in bounds]
        return torch.cat(parts, dim=2)[0] * self.config.latent_scale

    @torch.no_grad()
    def decode(self, latent: Tensor, *, chunk: int | None = None) -> Tensor:
        """latent [L, T', H', W'] -> video [C, 1 + (T'-1)*ft, H'*fs, W'*fs], clamped to [-1, 1]."""
        if latent.ndim != 4 or latent.shape[0] != self.config.latent_channels:
            raise ValueError(f"expected a latent [L={self.config.latent_channels}, T', H', W'], "
                             f"got {tuple(latent.shape)}")
        z = latent[None].float() / self.config.latent_scale
        t = z.shape[2]
        if chunk is None or chunk >= t:
            return self.decode_latent(z)[0].clamp(-1, 1)
        with _streaming(self):
            parts = [self.decode_latent(z[:, :, a:b]) for a, b in _chunks(t, chunk)]
        return torch.cat(parts, dim=2)[0].clamp(-1, 1)


def _init_regroup(skip: nn.Conv3d) -> None:
    """A 1x1x1 conv cin -> cout as a parameter-free regrouping: each input channel repeated
    cout/cin times (consecutive copies), or each run of cin/cout channels averaged; the
    latent's group means and repeats pair channels the same way. Other ratios keep their init."""
    cout, cin = skip.weight.shape[:2]
    w = torch.zeros(cout, cin)
    if cout % cin == 0:
        w[torch.arange(cout), torch.arange(cout) // (cout // cin)] = 1.0
    elif cin % cout == 0:
        k = cin // cout
        w[torch.arange(cin) // k, torch.arange(cin)] = 1.0 / k
    else:
        return
    skip.weight.copy_(w[:, :, None, None, None])
    skip.bias.zero_()


def _chunks(t: int, chunk: int) -> list[tuple[int, int]]:
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1 latent frame")
    return [(a, min(a + chunk, t)) for a in range(0, t, chunk)]


class _streaming:
    """Turn every block's time cache on for one chunked call, and off (cleared) after."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks = [m for m in model.modules() if isinstance(m, Streaming)]

    def __enter__(self) -> None:
        for m in self.blocks:
            m.reset_stream(True)

    def __exit__(self, *exc) -> None:
        for m in self.blocks:
            m.reset_stream(False)
