"""VAE training: VideoStream -> fit to the VAE's sizes -> L1 + SSIM + KL -> AdamW.

Batching: one clip per forward, at its native (fitted) size, with gradients summed over
`loop.accum` clips per optimizer step. A conv VAE has no padding-free way to batch
different sizes (packing is for token sequences), equal-size groups would need a bucket
buffer and hold back rare sizes, and on CPU a batch of B clips costs B single clips
anyway; accumulation gives the same averaged gradient with none of that (docs/vae.md).

One process, fp32 on CPU. A checkpoint (train/checkpoint.py: safetensors, atomic, keep-K)
holds the weights, the optimizer, scheduler, data stream and RNG states and the
VAEConfig, so a resume continues the same run and `model.vae_checkpoint.load_vae` reads
it directly. At the end the weights are exported to run_dir/vae with `latent_scale` set
so latents have unit standard deviation, and the PSNR report goes to run_dir/report.json.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from patchpack.model.vae import CausalVAE
from patchpack.model.vae_checkpoint import save_vae
from patchpack.model.vae_fit import fit_to_vae
from patchpack.model.vae_loss import psnr, vae_loss

from .checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from .decode import to_video_CTHW
from .metrics import MetricsLog
from .optim import adamw, warmup_cosine
from .options import to_yaml
from .stream import VideoStream
from .vae_config import VAETrainConfig

__all__ = ["train_vae", "vae_psnr_report", "synth_eval_videos", "latent_std"]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def vae_psnr_report(vae: CausalVAE, videos: Iterable[Tensor], *, chunk: int | None = None) -> list[dict]:
    """Reconstruction PSNR per (T, H, W): [{"frames", "height", "width", "clips", "psnr"}], in
    first-seen order. PSNR is of the mean squared error over all clips of that size
    (videos in [-1, 1], peak-to-peak 2). chunk: latent frames per encode/decode step."""
    sums: dict[tuple[int, int, int], list[float]] = {}
    for video in videos:
        recon = vae.decode(vae.encode(video, chunk=chunk), chunk=chunk)
        mse = float((recon.float() - video.float()).pow(2).mean())
        acc = sums.setdefault(tuple(video.shape[1:]), [0.0, 0])
        acc[0], acc[1] = acc[0] + mse, acc[1] + 1
    return [{"frames": t, "height": h, "width": w, "clips": n,
             "psnr": math.inf if s == 0 else round(10 * math.log10(4.0 / (s / n)), 2)}
            for (t, h, w), (s, n) in sums.items()]


def synth_eval_videos(sizes: Sequence[Sequence[int]], *, per_size: int, seed: int, photos: bool = True,
                      digit_fraction: float = 0.3, object_scale: Sequence[float] = (0.3, 0.45)) -> list[Tensor]:
    """Held-out synthetic clips at exact (T, H, W) sizes: shapes and photo pans alternately
    (photos=False: shapes only), drawn from the same generators as `patchpack synth` with
    their own seed; digit_fraction and object_scale as synth's."""
    from functools import partial

    from . import synth

    rng = random.Random(seed)
    shape = partial(synth._shape, digit_fraction=digit_fraction, object_scale=tuple(object_scale))
    out = []
    for t, h, w in sizes:
        for i in range(per_size):
            make = synth._photo if photos and i % 2 else shape  # the generators behind make_sample
            frames_THWC, _, _ = make(rng, int(t), int(h), int(w))
            out.append(to_video_CTHW(np.ascontiguousarray(frames_THWC)))
    return out


@torch.no_grad()
def latent_std(vae: CausalVAE, videos: Iterable[Tensor]) -> float:
    """Standard deviation of the unscaled posterior means over `videos` (for latent_scale)."""
    scale, vae.config.latent_scale = vae.config.latent_scale, 1.0
    try:
        z = torch.cat([vae.encode(v).flatten() for v in videos])
    finally:
        vae.config.latent_scale = scale
    return float(z.std())


# --------------------------------------------------------------------------- training


def _check(cfg: VAETrainConfig) -> None:
    lp = cfg.loop
    if min(lp.steps, lp.accum, lp.log_every, lp.ckpt_every, lp.keep, lp.threads) < 1:
        raise ValueError(f"loop steps/accum/log_every/ckpt_every/keep/threads must be >= 1: {lp}")
    if not cfg.data.shards:
        raise ValueError("data.shards is empty: point it at a directory of .tar shards")
    if cfg.clip.max_frames < 1 or cfg.clip.max_pixels < cfg.vae.spatial ** 2:
        raise ValueError(f"clip.max_frames={cfg.clip.max_frames} must be >= 1 and clip.max_pixels="
                         f"{cfg.clip.max_pixels} >= spatial^2={cfg.vae.spatial ** 2}")
    for s in cfg.eval.sizes:
        if len(s) != 3:
            raise ValueError(f"eval.sizes entries are (T, H, W), got {s}")
        cfg.vae.latent_shape(*s)


def _clips(stream: VideoStream, cfg: VAETrainConfig):
    """Fitted pixel clips from the stream; a latent shard here is a config mistake."""
    for key, video, meta in stream:
        if "latent" in meta:
            raise ValueError(f"{key}: data.shards holds latent shards; train the VAE on pixel shards")
        yield fit_to_vae(video, config=cfg.vae, max_pixels=cfg.clip.max_pixels, max_frames=cfg.clip.max_frames)


def train_vae(cfg: VAETrainConfig) -> dict:
    """Run (or resume) VAE training to cfg.loop.steps, export, report; returns a summary dict."""
    _check(cfg)
    lp, op = cfg.loop, cfg.optim
    torch.set_num_threads(lp.threads)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = to_yaml(cfg)
    (run_dir / "config.yaml").write_text(config_yaml)

    torch.manual_seed(cfg.seed)
    vae = CausalVAE(cfg.vae).train()
    optimizer = adamw(vae, lr=op.lr, weight_decay=op.weight_decay, betas=tuple(op.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=op.warmup, total=lp.steps, min_ratio=op.min_lr_ratio))
    gen = torch.Generator().manual_seed(cfg.seed)  # posterior samples
    stream = VideoStream(cfg.data)

    step = 0
    resume = resolve_resume(lp.resume, ckpt_dir)
    if resume is not None:
        step, model_state, state = load_checkpoint(resume)
        vae.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["loop"])

    def checkpoint() -> Path:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "data": stream.state_dict(), "rng": {"torch": torch.get_rng_state(), "loop": gen.get_state()},
                 "vae_config": cfg.vae.to_dict(), "config": config_yaml}
        return save_checkpoint(ckpt_dir, step, model_state=vae.state_dict(), state=state, keep=lp.keep)

    log = MetricsLog(run_dir / "metrics.jsonl", console=True)
    start_step, stopped, saved_at = step, "steps", -1
    window = dict.fromkeys(("loss", "l1", "ssim", "kl", "psnr", "grad_norm", "steps", "clips", "pixels"), 0.0)
    t_start = t_window = time.perf_counter()
    clips = _clips(stream, cfg)
    try:
        while step < lp.steps:
            if lp.time_limit is not None and time.perf_counter() - t_start > lp.time_limit:
                stopped = "time_limit"
                break
            optimizer.zero_grad(set_to_none=True)
            got = 0
            for _ in range(lp.accum):
                x = next(clips, None)
                if x is None:
                    break
                out = vae(x[None], sample=cfg.loss.sample, generator=gen)
                parts = vae_loss(out.recon, x[None], out.mean, out.logvar,
                                 ssim_weight=cfg.loss.ssim_weight, kl_weight=cfg.vae.kl_weight)
                (parts.loss / lp.accum).backward()  # the mean gradient over the step's clips
                got += 1
                for k in ("loss", "l1", "ssim", "kl"):
                    window[k] += float(getattr(parts, k).detach())
                window["psnr"] += psnr(out.recon.detach(), x[None])
                window["pixels"] += x[0].numel()
            if got == 0:
                stopped = "data_exhausted"
                break
            clip = op.grad_clip if op.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(vae.parameters(), clip))
            if not math.isfinite(grad_norm):
                raise RuntimeError(f"non-finite gradient norm at step {step}; lower optim.lr")
            optimizer.step()
            scheduler.step()
            step += 1
            window["grad_norm"] += grad_norm
            window["steps"] += 1
            window["clips"] += got
            if step % lp.log_every == 0 or step == lp.steps:
                dt, n, c = max(time.perf_counter() - t_window, 1e-9), window["steps"], window["clips"]
                log.log(step, {"loss": window["loss"] / c, "l1": window["l1"] / c, "ssim": window["ssim"] / c,
                               "kl": window["kl"] / c, "psnr": window["psnr"] / c,
                               "lr": scheduler.get_last_lr()[0], "grad_norm": window["grad_norm"] / n,
                               "clips_per_s": c / dt, "pixels_per_s": window["pixels"] / dt,
                               "skipped": stream.skips})
                window = dict.fromkeys(window, 0.0)
                t_window = time.perf_counter()
            if step % lp.ckpt_every == 0:
                checkpoint()
                saved_at = step
        if saved_at != step:
            checkpoint()
    finally:
        log.close()
    train_seconds = time.perf_counter() - t_start

    vae.eval()
    ev = cfg.eval
    videos = synth_eval_videos(ev.sizes, per_size=ev.per_size, seed=ev.seed, photos=ev.photos,
                               digit_fraction=ev.digit_fraction, object_scale=ev.object_scale)
    vae.config.latent_scale = 1.0 / max(latent_std(vae, videos), 1e-6)
    report = vae_psnr_report(vae, videos)
    export = save_vae(vae, run_dir / "vae")
    summary = {"step": step, "start_step": start_step, "stopped": stopped, "train_seconds": round(train_seconds, 1),
               "latent_scale": vae.config.latent_scale, "psnr": report, "skipped": stream.skips,
               "run_dir": str(run_dir), "checkpoint": str(latest_checkpoint(ckpt_dir)), "vae": str(export)}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in report:
        print(f"psnr {r['frames']}x{r['height']}x{r['width']} ({r['clips']} clips): {r['psnr']:.2f} dB", flush=True)
    return summary
