"""VAETrainConfig: every knob of one VAE training run, loadable with `options.load_config`.

The model's own fields are model.vae.VAEConfig, used as is; the data is the DiT's
DataConfig (same shards, same decoding); the rest sizes the clips, the loss and the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from patchpack.model.vae import VAEConfig

from .config import DataConfig
from .train_config import OptimOptions


@dataclass
class VAEClipOptions:
    # Decoded clips are fitted to the VAE (model/vae_fit.py): the leading 1 + k*temporal
    # frames up to max_frames, both sides scaled by one factor so H*W <= max_pixels,
    # rounded down to the spatial factor. Compute per step is ~ frames x pixels.
    max_pixels: int = 64 * 64  # per frame
    max_frames: int = 9  # 1 + 2*4: two latent frames after the first at temporal=4


@dataclass
class VAELossOptions:
    ssim_weight: float = 0.2  # weight of (1 - SSIM), the LPIPS-free perceptual proxy, beside L1
    sample: bool = True  # decode a posterior sample (True, a VAE) or the mean (False, an AE)


@dataclass
class VAELoopOptions:
    steps: int = 600  # optimizer steps in total (a resume continues up to this)
    accum: int = 2  # clips per optimizer step: one clip per forward, gradients summed (docs/vae.md)
    log_every: int = 10  # steps between metrics.jsonl records
    ckpt_every: int = 200  # steps between checkpoints (one more is written at the end)
    keep: int = 3  # newest checkpoints kept
    resume: str = "auto"  # "auto": latest in run_dir/checkpoints if any; "none"; or a checkpoint path
    threads: int = 2  # torch.set_num_threads
    time_limit: float | None = None  # seconds; stop (and checkpoint) at the first step past it


@dataclass
class VAEEvalOptions:
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


@dataclass
class VAETrainConfig:
    run_dir: str = "runs/vae"  # metrics.jsonl, config.yaml, checkpoints/, vae/ (the export), report.json
    seed: int = 0  # init, posterior samples
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: VAEClipOptions = field(default_factory=VAEClipOptions)
    loss: VAELossOptions = field(default_factory=VAELossOptions)
    # the DiT's optimizer options (train_config.OptimOptions) with a VAE's defaults
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(lr=1e-3, betas=[0.9, 0.99], warmup=20))
    loop: VAELoopOptions = field(default_factory=VAELoopOptions)
    eval: VAEEvalOptions = field(default_factory=VAEEvalOptions)
