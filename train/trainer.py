"""The training loop: PackedStream -> caption dropout -> text encoder -> flow loss -> AdamW.

One process, fp32 on CPU (torchrun/DDP is not wired yet). Every state that shapes the
next step is checkpointed, so a resume with `loop.num_workers=0` continues bitwise:
weights (DiT in model.safetensors, a trainable text encoder in the state), EMA,
optimizer, scheduler, the data stream, the torch RNG and the loop's own generator
(timesteps, noise and caption dropout). SIGTERM saves a checkpoint at the next step
boundary and returns instead of dying mid-write.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import torch
from torch import nn

from patchpack.model import DiT, dit_config, flow_loss
from patchpack.model.text import build_text_encoder, drop_captions

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsLog
from .optim import EMA, adamw, warmup_cosine
from .options import to_yaml
from .stream import PackedStream
from .train_config import TrainConfig


def build_models(cfg: TrainConfig) -> tuple[DiT, nn.Module]:
    """(DiT, text encoder) for pixel-space training; the DiT reads the encoder's dim."""
    encoder = build_text_encoder(cfg.text)
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("depth", "hidden", "heads") if getattr(m, k) is not None}
    dit_cfg = dit_config(m.preset, in_channels=3, patch=tuple(cfg.packer.patch), text_dim=encoder.dim,
                         attn_backend=m.attn_backend, **overrides)
    return DiT(dit_cfg), encoder


def _trained(model: DiT, encoder: nn.Module) -> nn.ModuleDict:
    """The modules the optimizer and EMA own: the DiT, plus the encoder if trainable."""
    parts = {"dit": model}
    if getattr(encoder, "trainable", False):
        parts["text"] = encoder
    return nn.ModuleDict(parts)


class _StopFlag:
    """SIGTERM -> set a flag the loop reads at the step boundary (main thread only)."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self) -> _StopFlag:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, the loop runs to the end
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _resume_path(cfg: TrainConfig, ckpt_dir: Path) -> Path | None:
    r = cfg.loop.resume
    if r == "none":
        return None
    if r == "auto":
        return latest_checkpoint(ckpt_dir)
    path = Path(r)
    if not (path / "state.json").exists():
        raise ValueError(f"loop.resume={r!r} is not a checkpoint directory (expected 'auto', 'none' or a path)")
    return path


def _check(cfg: TrainConfig) -> None:
    lp = cfg.loop
    if min(lp.steps, lp.log_every, lp.ckpt_every, lp.keep, lp.max_nonfinite, lp.threads) < 1:
        raise ValueError(f"loop steps/log_every/ckpt_every/keep/max_nonfinite/threads must be >= 1: {lp}")
    if not cfg.data.shards:
        raise ValueError("data.shards is empty: point it at a directory of .tar shards")


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training to cfg.loop.steps; returns a summary dict."""
    _check(cfg)
    lp, op = cfg.loop, cfg.optim
    torch.set_num_threads(lp.threads)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = to_yaml(cfg)
    (run_dir / "config.yaml").write_text(config_yaml)

    torch.manual_seed(cfg.seed)
    model, encoder = build_models(cfg)
    trained = _trained(model, encoder).train()
    optimizer = adamw(trained, lr=op.lr, weight_decay=op.weight_decay, betas=tuple(op.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=op.warmup, total=lp.steps, min_ratio=op.min_lr_ratio))
    ema = EMA(trained, decay=lp.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # timesteps, noise, caption dropout
    stream = PackedStream(cfg.data, cfg.packer.build())

    step, nonfinite_total = 0, 0
    resume = _resume_path(cfg, ckpt_dir)
    if resume is not None:
        step, model_state, state = load_checkpoint(resume)
        model.load_state_dict(model_state)
        if "text" in trained:
            encoder.load_state_dict(state["text"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["loop"])
        nonfinite_total = int(state["nonfinite"])

    def checkpoint() -> Path:
        state = {
            "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "data": stream.state_dict(), "rng": {"torch": torch.get_rng_state(), "loop": gen.get_state()},
            "nonfinite": nonfinite_total, "config": config_yaml,
        }
        if "text" in trained:
            state["text"] = encoder.state_dict()
        return save_checkpoint(ckpt_dir, step, model_state=model.state_dict(), state=state, keep=lp.keep)

    log = MetricsLog(run_dir / "metrics.jsonl", console=True)
    start_step, nonfinite_run, stopped = step, 0, "steps"
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "slots": 0, "samples": 0, "grad_norm": 0.0}
    t_window = time.perf_counter()
    last_loss = math.nan
    saved_at = -1
    try:
        with _StopFlag() as stop:
            batches = stream.loader(num_workers=lp.num_workers)
            while step < lp.steps:
                if stop.set:
                    stopped = "sigterm"
                    break
                batch = next(batches, None)
                if batch is None:
                    stopped = "data_exhausted"
                    break
                captions = drop_captions([m["caption"] for m in batch.meta], lp.caption_dropout, generator=gen)
                text_tokens, text_lengths = encoder(captions)
                loss = flow_loss(model, batch, text_tokens, text_lengths, generator=gen).loss
                optimizer.zero_grad(set_to_none=True)
                reason = None if torch.isfinite(loss) else "nonfinite_loss"
                if reason is None:
                    loss.backward()
                    clip = op.grad_clip if op.grad_clip > 0 else math.inf
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(trained.parameters(), clip))
                    reason = None if math.isfinite(grad_norm) else "nonfinite_grad"
                if reason is not None:  # skip: no optimizer, scheduler or EMA step
                    optimizer.zero_grad(set_to_none=True)
                    nonfinite_total += 1
                    nonfinite_run += 1
                    log.log(step, {"skipped_step": reason, "nonfinite_total": nonfinite_total})
                    if nonfinite_run >= lp.max_nonfinite:
                        raise RuntimeError(f"{nonfinite_run} non-finite steps in a row at step {step} "
                                           f"(last: {reason}); stopping (loop.max_nonfinite={lp.max_nonfinite})")
                    continue
                nonfinite_run = 0
                optimizer.step()
                scheduler.step()
                ema.update(trained)
                step += 1
                last_loss = float(loss.detach())

                rows, row_len = batch.shape
                window["loss"] += last_loss
                window["grad_norm"] += grad_norm
                window["steps"] += 1
                window["tokens"] += int(batch.num_tokens.sum())  # host-side bookkeeping: no device sync
                window["slots"] += rows * row_len
                window["samples"] += len(batch.meta)
                if step % lp.log_every == 0 or step == lp.steps:
                    dt = max(time.perf_counter() - t_window, 1e-9)
                    n = window["steps"]
                    log.log(step, {
                        "loss": window["loss"] / n if n > 1 else last_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": window["grad_norm"] / n,
                        "tokens_per_s": window["tokens"] / dt,  # useful (non-padding) tokens
                        "fill": window["tokens"] / max(window["slots"], 1),
                        "samples_per_s": window["samples"] / dt,
                        "skipped": stream.skips,
                        "nonfinite_total": nonfinite_total,
                    })
                    window = dict.fromkeys(window, 0)
                    t_window = time.perf_counter()
                if step % lp.ckpt_every == 0:
                    checkpoint()
                    saved_at = step
        if saved_at != step:
            checkpoint()
    finally:
        log.close()
    return {"step": step, "start_step": start_step, "loss": last_loss, "stopped": stopped,
            "nonfinite": nonfinite_total, "skipped": stream.skips, "run_dir": str(run_dir),
            "checkpoint": str(latest_checkpoint(ckpt_dir))}
