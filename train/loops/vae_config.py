"""VAETrainConfig: every knob of one VAE training run, loadable with `options.load_config`.

The model's own fields are model.vae.VAEConfig, used as is; the data is the DiT's
DataConfig (same shards, same decoding); the rest sizes the clips, the loss and the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from patchpack.model.vae import VAEConfig
from patchpack.train.data.config import DataConfig

from .config import LoopConfig, OptimConfig, check_int, check_range


@dataclass
class VAEClipConfig:
    # Decoded clips are fitted to the VAE (model/vae/fit.py): the leading 1 + k*temporal
    # frames up to max_frames, both sides scaled by one factor so H*W <= max_pixels,
    # rounded down to the spatial factor. Compute per step is ~ frames x pixels.
    max_pixels: int = 64 * 64  # per frame
    max_frames: int = 9  # 1 + 2*4: two latent frames after the first at temporal=4

    def __post_init__(self) -> None:
        check_int("clip.max_pixels", self.max_pixels, low=1)
        check_int("clip.max_frames", self.max_frames, low=1)


@dataclass
class VAELossConfig:
    ssim_weight: float = 0.2  # weight of (1 - SSIM), the LPIPS-free perceptual proxy, beside L1
    sample: bool = True  # decode a posterior sample (True, a VAE) or the mean (False, an AE)

    def __post_init__(self) -> None:
        check_range("loss.ssim_weight", self.ssim_weight, low=0.0)


@dataclass
class VAELoopConfig(LoopConfig):
    accum: int = 2  # clips per optimizer step: one clip per forward, gradients summed (docs/vae.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("loop.accum", self.accum, low=1)


@dataclass
class VAEEvalConfig:
    # (T, H, W) sizes for the PSNR report after training, on held-out synthetic clips
    # (another seed): the trained sizes and unseen ones (larger, longer, other aspects).
    sizes: list[list[int]] = field(default_factory=lambda: [[1, 64, 64], [9, 48, 80], [17, 64, 64],
                                                            [1, 128, 128], [33, 96, 160]])
    per_size: int = 4  # clips per size
    seed: int = 1000
    # what the held-out clips show (they also set latent_scale): shapes and photo pans
    # alternately, or shapes only for a VAE trained on shapes only (synth's knobs)
    photos: bool = True
    digit_fraction: float = 0.3
    object_scale: list[float] = field(default_factory=lambda: [0.3, 0.45])

    def __post_init__(self) -> None:
        check_int("eval.per_size", self.per_size, low=1)
        for s in self.sizes:
            if len(s) != 3:
                raise ValueError(f"eval.sizes entries are (T, H, W), got {list(s)}")
            for v in s:
                check_int("eval.sizes", v, low=1)


@dataclass
class VAETrainConfig:
    run_dir: str = "runs/vae"  # metrics.jsonl, config.yaml, checkpoints/, vae/ (the export), report.json
    seed: int = 0  # init, posterior samples
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: VAEClipConfig = field(default_factory=VAEClipConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    # the DiT's optimizer options (config.OptimConfig) with a VAE's defaults
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=[0.9, 0.99], warmup=20))
    loop: VAELoopConfig = field(default_factory=VAELoopConfig)
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)
