"""VAE training: VideoStream -> fit to the VAE's sizes -> L1 + SSIM + KL -> AdamW.

Batching: one clip per forward, at its native (fitted) size, with gradients summed over
`loop.accum` clips per optimizer step. A conv VAE has no padding-free way to batch
different sizes (packing is for token sequences), equal-size groups would need a bucket
buffer and hold back rare sizes, and on CPU a batch of B clips costs B single clips
anyway; accumulation gives the same averaged gradient with none of that (docs/vae.md).

One process, fp32 on CPU. The step loop is skeleton.py's, shared with the DiT loop;
`VAETask` is this loop's part. A checkpoint (run_state.py) holds the weights, the
optimizer, scheduler, data stream and RNG states, and the VAEConfig as vae.json beside
the weights, so a resume continues the same run and `patchpack.model.vae.load_vae`
reads a checkpoint directory directly. At the end the weights are exported to run_dir/vae with `latent_scale` set
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

from patchpack.model.vae import VAE_CONFIG_NAME, CausalVAE, fit_to_vae, psnr, save_vae, vae_loss
from patchpack.train.data import VideoStream, to_video_CTHW
from patchpack.train.options import to_yaml
from patchpack.train.stop import StopRequested

from .checkpoint import latest_checkpoint
from .config import check_loop
from .dit_loop import SKIP_LOG, no_data_error
from .metrics import MetricsLog
from .optim import adamw, warmup_cosine
from .run_state import RunState, load_resume, load_weights, save_run_state
from .skeleton import StepOutcome, run_loop
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

    from patchpack.train.data.synth import photo_clip, shape_clip

    rng = random.Random(seed)
    shape = partial(shape_clip, digit_fraction=digit_fraction, object_scale=tuple(object_scale))
    out = []
    for t, h, w in sizes:
        for i in range(per_size):
            make = photo_clip if photos and i % 2 else shape
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
    check_loop(cfg.loop, data=cfg.data)
    if cfg.loop.accum < 1:
        raise ValueError(f"loop.accum must be >= 1, got {cfg.loop.accum}")
    if cfg.clip.max_frames < 1 or cfg.clip.max_pixels < cfg.vae.spatial ** 2:
        raise ValueError(f"clip.max_frames={cfg.clip.max_frames} must be >= 1 and clip.max_pixels="
                         f"{cfg.clip.max_pixels} >= spatial^2={cfg.vae.spatial ** 2}")
    for s in cfg.eval.sizes:
        if len(s) != 3:
            raise ValueError(f"eval.sizes entries are (T, H, W), got {s}")
        cfg.vae.latent_shape(*s)


def _clips(stream: VideoStream, cfg: VAETrainConfig):
    """Fitted pixel clips from the stream; a latent shard here is a config mistake, a clip the
    VAE cannot take (smaller than its spatial factor) a counted skip."""
    for key, video, meta in stream:
        if "latent" in meta:
            raise ValueError(f"{key}: data.shards holds latent shards; train the VAE on pixel shards")
        try:
            clip = fit_to_vae(video, config=cfg.vae, max_pixels=cfg.clip.max_pixels, max_frames=cfg.clip.max_frames)
        except ValueError as e:
            stream.skip(key, "vae_unfit", str(e))
            continue
        yield clip


_WINDOW = ("loss", "l1", "ssim", "kl", "psnr", "grad_norm", "steps", "clips", "pixels")


class VAETask:
    """The VAE, its optimizer and data, and one accumulated step of it (skeleton.TrainingTask)."""

    def __init__(self, cfg: VAETrainConfig) -> None:
        lp, op = cfg.loop, cfg.optim
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_yaml = to_yaml(cfg)
        (self.run_dir / "config.yaml").write_text(self.config_yaml)

        torch.manual_seed(cfg.seed)
        self.vae = CausalVAE(cfg.vae).train()
        self.optimizer = adamw(self.vae, lr=op.lr, weight_decay=op.weight_decay, betas=tuple(op.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup=op.warmup, total=lp.steps, min_ratio=op.min_lr_ratio))
        self.gen = torch.Generator().manual_seed(cfg.seed)  # posterior samples
        self.stream = VideoStream(cfg.data, skip_log=self.run_dir / SKIP_LOG)
        self.step = 0
        state = load_resume(lp.resume, self.ckpt_dir)
        if state is not None:
            load_weights(self.vae, state.weights, state)
            self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            mine = state.rank(0, 1)
            self.stream.load_state_dict(mine["data"])
            torch.set_rng_state(mine["rng"]["torch"])
            self.gen.set_state(mine["rng"]["loop"])
            self.step = state.step
        self.start_step = self.step
        self.clips = _clips(self.stream, cfg)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", console=True)
        self.window = dict.fromkeys(_WINDOW, 0.0)
        self.t_window = time.perf_counter()

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- skeleton.TrainingTask

    def agree(self, flags: list[bool]) -> list[bool]:
        return flags  # one process

    def train_step(self) -> StepOutcome:
        cfg, w = self.cfg, self.window
        self.optimizer.zero_grad(set_to_none=True)
        got = 0
        for _ in range(cfg.loop.accum):
            try:
                x = next(self.clips, None)
            except StopRequested:  # the stream's state is whole; the clips of this step are dropped
                return "stopped"
            if x is None:
                break
            out = self.vae(x[None], sample=cfg.loss.sample, generator=self.gen)
            parts = vae_loss(out.recon, x[None], out.mean, out.logvar,
                             ssim_weight=cfg.loss.ssim_weight, kl_weight=cfg.vae.kl_weight)
            (parts.loss / cfg.loop.accum).backward()  # the mean gradient over the step's clips
            got += 1
            for k in ("loss", "l1", "ssim", "kl"):
                w[k] += float(getattr(parts, k).detach())
            w["psnr"] += psnr(out.recon.detach(), x[None])
            w["pixels"] += x[0].numel()
        if got == 0:
            if self.step == self.start_step:
                raise no_data_error(self.stream.skips, resumed=self.start_step > 0)
            return "exhausted"
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.vae.parameters(), clip))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at step {self.step}; lower optim.lr")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        w["grad_norm"] += grad_norm
        w["steps"] += 1
        w["clips"] += got
        return "done"

    def log(self) -> None:
        w = self.window
        dt, n, c = max(time.perf_counter() - self.t_window, 1e-9), w["steps"], w["clips"]
        self.metrics.log(self.step, {"loss": w["loss"] / c, "l1": w["l1"] / c, "ssim": w["ssim"] / c,
                                     "kl": w["kl"] / c, "psnr": w["psnr"] / c,
                                     "lr": self.scheduler.get_last_lr()[0], "grad_norm": w["grad_norm"] / n,
                                     "clips_per_s": c / dt, "pixels_per_s": w["pixels"] / dt,
                                     "skipped": self.stream.skips})
        self.window = dict.fromkeys(_WINDOW, 0.0)
        self.t_window = time.perf_counter()

    def save(self) -> Path:
        rng = {"torch": torch.get_rng_state(), "loop": self.gen.get_state()}
        return save_run_state(self.ckpt_dir, RunState(
            step=self.step, config=self.config_yaml, weights=self.vae.state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            ranks=[{"data": self.stream.state_dict(), "rng": rng}],
            model_config=(VAE_CONFIG_NAME, self.cfg.vae.to_dict())), keep=self.cfg.loop.keep)

    def close(self) -> None:
        self.metrics.close()


def train_vae(cfg: VAETrainConfig) -> dict:
    """Run (or resume) VAE training to cfg.loop.steps, export, report; returns a summary dict."""
    _check(cfg)
    lp = cfg.loop
    torch.set_num_threads(lp.threads)
    task = VAETask(cfg)
    t_start = time.perf_counter()
    try:
        stopped = run_loop(task, steps=lp.steps, log_every=lp.log_every, ckpt_every=lp.ckpt_every,
                           time_limit=lp.time_limit)
    finally:
        task.close()
    train_seconds = time.perf_counter() - t_start

    vae = task.vae.eval()
    ev = cfg.eval
    videos = synth_eval_videos(ev.sizes, per_size=ev.per_size, seed=ev.seed, photos=ev.photos,
                               digit_fraction=ev.digit_fraction, object_scale=ev.object_scale)
    vae.config.latent_scale = 1.0 / max(latent_std(vae, videos), 1e-6)
    report = vae_psnr_report(vae, videos)
    export = save_vae(vae, task.run_dir / "vae")
    summary = {"step": task.step, "start_step": task.start_step, "stopped": stopped,
               "train_seconds": round(train_seconds, 1), "latent_scale": vae.config.latent_scale, "psnr": report,
               "skipped": task.stream.skips, "run_dir": str(task.run_dir),
               "checkpoint": str(latest_checkpoint(task.ckpt_dir)), "vae": str(export)}
    (task.run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in report:
        print(f"psnr {r['frames']}x{r['height']}x{r['width']} ({r['clips']} clips): {r['psnr']:.2f} dB", flush=True)
    return summary
