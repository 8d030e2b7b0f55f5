"""The training loop: PackedStream -> caption dropout -> text encoder -> flow loss -> AdamW.

One process, or one per device under torchrun (DDP or FSDP2; train/distributed.py,
train/parallel.py). Every state that shapes the next step is checkpointed, so a resume
with `loop.num_workers=0` continues bitwise: weights (DiT in model.safetensors, a
trainable text encoder in the state), EMA, optimizer, scheduler, and per rank the data
stream, the torch RNG and the loop's own generators (timesteps, noise and caption
dropout). SIGTERM saves a checkpoint at the next step boundary and returns instead of
dying mid-write.

Data parallelism. DDP (or FSDP2) wraps `FlowObjective`, a small module that owns the
trained parts (the DiT and, when trainable, the text encoder) and returns the flow loss
for (batch, captions). Wrapping the DiT alone would not do: the trainable encoder runs
outside it and its gradients would never be averaged; all-reducing gradients by hand
would duplicate DDP's bucketing and its overlap of communication with backward.
Each rank's loss is the mean over its own valid tokens and gradients are averaged over
ranks, so the step follows the mean of per-rank means (rows are full, so close to the
global token mean).

Only rank 0 writes metrics and checkpoints. The per-rank parts of a checkpoint (data
stream, RNG) are gathered to rank 0 and saved as `state["ranks"][r]`; every rank loads
the whole checkpoint on resume and takes its own entry, so a resume needs the same
world size (and a filesystem every node can read).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from patchpack.model import DiT, dit_config, flow_loss
from patchpack.model.flow import sample_timesteps
from patchpack.model.text import build_text_encoder, drop_captions
from patchpack.model.vae_checkpoint import vae_config_of

from .checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from .distributed import (
    DistInfo,
    any_rank,
    barrier,
    close_distributed,
    gather_to_main,
    init_distributed,
    sum_ranks,
)
from .metrics import MetricsLog, Progress
from .optim import EMA, adamw, warmup_cosine
from .options import to_yaml
from .parallel import (
    apply_compile,
    apply_grad_checkpointing,
    autocast,
    autocast_dtype,
    check_parallel,
    check_precision,
    full_tensors,
    local_norm,
    shard_like,
    shard_optimizer_state,
    wrap_data_parallel,
)
from .skips import merge_counts
from .stream import PackedStream
from .train_config import TrainConfig


def build_models(cfg: TrainConfig, **dit_overrides) -> tuple[DiT, nn.Module]:
    """(DiT, text encoder); the DiT reads the encoder's dim, and the VAE's latent channels
    when cfg.vae is set (3 pixel channels otherwise). dit_overrides: further DiTConfig fields
    (e.g. rope_extrapolation when sampling)."""
    encoder = build_text_encoder(cfg.text)
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("depth", "hidden", "heads") if getattr(m, k) is not None}
    overrides.update(dit_overrides)
    channels = 3 if cfg.vae is None else vae_config_of(cfg.vae).latent_channels
    dit_cfg = dit_config(m.preset, in_channels=channels, patch=tuple(cfg.packer.patch), text_dim=encoder.dim,
                         attn_backend=m.attn_backend, prediction=m.prediction, **overrides)
    return DiT(dit_cfg), encoder


def _trained(model: DiT, encoder: nn.Module) -> nn.ModuleDict:
    """The modules the optimizer and EMA own: the DiT, plus the encoder if trainable."""
    parts = {"dit": model}
    if getattr(encoder, "trainable", False):
        parts["text"] = encoder
    return nn.ModuleDict(parts)


class FlowObjective(nn.Module):
    """(batch, captions) -> FlowLoss, with every trained parameter inside: what DDP/FSDP wraps."""

    def __init__(self, trained: nn.ModuleDict, encoder: nn.Module, *, amp_dtype: torch.dtype | None):
        super().__init__()
        self.trained = trained
        # a frozen encoder is kept off the module tree: DDP would broadcast it for nothing
        self.__dict__["encoder"] = encoder
        self.amp_dtype = amp_dtype

    def forward(self, batch, captions: list[str], t_S: torch.Tensor, generator: torch.Generator):
        device = batch.tokens.device
        with autocast(device, self.amp_dtype):
            text_tokens, text_lengths = self.encoder(captions)
            return flow_loss(self.trained["dit"], batch, text_tokens, text_lengths, generator=generator, t_S=t_S)


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


def _check(cfg: TrainConfig) -> None:
    lp = cfg.loop
    if min(lp.steps, lp.log_every, lp.ckpt_every, lp.keep, lp.max_nonfinite, lp.threads) < 1:
        raise ValueError(f"loop steps/log_every/ckpt_every/keep/max_nonfinite/threads must be >= 1: {lp}")
    if not cfg.data.shards:
        raise ValueError("data.shards is empty: point it at a directory of .tar shards")
    check_parallel(lp.parallel)  # before any process group or model exists
    check_precision(lp.precision)


def _rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the configured seed (a 1-process run is unchanged); others get their own."""
    return seed + 1_000_003 * rank


class _Generators:
    """The loop's RNG: `cpu` draws caption dropout and timesteps, `noise` the flow noise
    (the same generator on CPU; one on the device under CUDA, so noise is drawn there)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cpu = torch.Generator().manual_seed(seed)
        self.noise = self.cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed + 1)
        self.device = device

    def state(self) -> dict:
        s = {"torch": torch.get_rng_state(), "loop": self.cpu.get_state()}
        if self.device.type == "cuda":
            s["noise"] = self.noise.get_state()
            s["cuda"] = torch.cuda.get_rng_state(self.device)
        return s

    def load(self, s: dict) -> None:
        torch.set_rng_state(s["torch"])
        self.cpu.set_state(s["loop"])
        if self.device.type == "cuda" and "noise" in s:
            self.noise.set_state(s["noise"])
            torch.cuda.set_rng_state(s["cuda"], self.device)


def _rank_entry(state: dict, info: DistInfo) -> dict:
    """This rank's data and RNG state from a checkpoint (older 1-process layout included)."""
    ranks = state.get("ranks")
    if ranks is None:  # checkpoints written before multi-process training
        ranks = [{"data": state["data"], "rng": state["rng"]}]
    if len(ranks) != info.world_size:
        raise ValueError(f"checkpoint was written by {len(ranks)} ranks, resuming with world_size="
                         f"{info.world_size}: resume with the same number of processes")
    return ranks[info.rank]


class _Window:
    """Sums between two metric records, reduced over ranks when one is written."""

    KEYS = ("loss", "grad_norm", "steps", "tokens", "slots", "samples")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.t0 = time.perf_counter()

    def add(self, *, loss: float, grad_norm: float, batch) -> None:
        rows, row_len = batch.shape
        s = self.sums
        s["loss"] += loss
        s["grad_norm"] += grad_norm
        s["steps"] += 1
        s["tokens"] += int(batch.num_tokens.sum())  # host-side bookkeeping: no device sync
        s["slots"] += rows * row_len
        s["samples"] += len(batch.meta)

    def record(self, info: DistInfo, *, lr: float, skips: dict, nonfinite_total: int) -> dict | None:
        """The record over all ranks (on rank 0; None elsewhere). Collective: every rank calls it."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        total = dict(zip(self.KEYS, sum_ranks(info, [self.sums[k] for k in self.KEYS])))
        all_skips = gather_to_main(info, skips)
        self.reset()
        if not info.is_main:
            return None
        n = max(total["steps"], 1)  # steps summed over ranks: world_size x local steps
        return {
            "loss": total["loss"] / n,  # mean over steps and ranks
            "lr": lr,
            "grad_norm": total["grad_norm"] / n,  # the same on every rank (after DDP's all-reduce)
            "tokens_per_s": total["tokens"] / dt,  # useful (non-padding) tokens, all ranks
            "fill": total["tokens"] / max(total["slots"], 1),
            "samples_per_s": total["samples"] / dt,
            "skipped": merge_counts(all_skips),
            "nonfinite_total": nonfinite_total,
            "world_size": info.world_size,
        }


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training to cfg.loop.steps; returns a summary dict (on every rank)."""
    _check(cfg)
    info = init_distributed(device=cfg.loop.device)
    try:
        return _train(cfg, info)
    finally:
        close_distributed(info)


@dataclass
class _Run:
    """Everything one rank trains with, built (and resumed) by `_setup`."""

    cfg: TrainConfig
    info: DistInfo
    config_yaml: str
    model: DiT
    encoder: nn.Module
    trained: nn.ModuleDict  # what the optimizer and EMA own
    objective: nn.Module  # FlowObjective, wrapped for data parallelism
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    gens: _Generators
    stream: PackedStream
    step: int = 0
    nonfinite_total: int = 0

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "checkpoints"


def _setup(cfg: TrainConfig, info: DistInfo) -> _Run:
    lp, op = cfg.loop, cfg.optim
    device = info.device
    config_yaml = to_yaml(cfg)
    if info.is_main:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.yaml").write_text(config_yaml)
    amp_dtype = autocast_dtype(lp.precision, device)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model, encoder = build_models(cfg)
    model.to(device)
    encoder.to(device)
    trained = _trained(model, encoder).train()
    gens = _Generators(_rank_seed(cfg.seed, info.rank), device)
    stream = PackedStream(cfg.data, cfg.packer.build(), rank=info.rank, world_size=info.world_size)

    step, nonfinite_total, state = 0, 0, None
    resume = resolve_resume(cfg.loop.resume, Path(cfg.run_dir) / "checkpoints")
    if resume is not None:  # every rank reads the same checkpoint; weights before any sharding
        step, model_state, state = load_checkpoint(resume)
        model.load_state_dict(model_state)
        if "text" in trained:
            encoder.load_state_dict(state["text"])
        mine = _rank_entry(state, info)
        stream.load_state_dict(mine["data"])
        gens.load(mine["rng"])
        nonfinite_total = int(state["nonfinite"])

    # knobs from the outside (none renames a parameter), then data parallelism, then the
    # optimizer over the final (possibly sharded) parameters: torchtitan's order
    if lp.grad_checkpointing:
        apply_grad_checkpointing(model)
    if lp.compile:
        apply_compile(model)
    objective = wrap_data_parallel(FlowObjective(trained, encoder, amp_dtype=amp_dtype), info,
                                   parallel=lp.parallel, blocks=model.blocks)
    optimizer = adamw(trained, lr=op.lr, weight_decay=op.weight_decay, betas=tuple(op.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=op.warmup, total=lp.steps, min_ratio=op.min_lr_ratio))
    ema = EMA(trained, decay=lp.ema_decay)
    if state is not None:
        sharded = dict(ema.shadow)
        ema.load_state_dict(state["ema"])
        ema.shadow = {k: shard_like(v, sharded[k]) for k, v in ema.shadow.items()}
        optimizer.load_state_dict(shard_optimizer_state(state["optimizer"], optimizer))
        scheduler.load_state_dict(state["scheduler"])
    return _Run(cfg, info, config_yaml, model, encoder, trained, objective, optimizer, scheduler, ema, gens,
                stream, step, nonfinite_total)


def _save(run: _Run) -> Path | None:
    """Collective: rank 0 writes a checkpoint, the others wait until it is in place."""
    info, has_text = run.info, "text" in run.trained
    ranks = gather_to_main(info, {"data": run.stream.state_dict(), "rng": run.gens.state()})
    # full tensors on every rank first: gathering FSDP shards is itself a collective
    full = full_tensors({"model": run.model.state_dict(), "ema": run.ema.state_dict(),
                         "optimizer": run.optimizer.state_dict(),
                         "text": run.encoder.state_dict() if has_text else None})
    path = None
    if info.is_main:
        state = {
            "ema": full["ema"], "optimizer": full["optimizer"], "scheduler": run.scheduler.state_dict(),
            "ranks": ranks, "world_size": info.world_size, "nonfinite": run.nonfinite_total,
            "config": run.config_yaml,
        }
        if has_text:
            state["text"] = full["text"]
        path = save_checkpoint(run.ckpt_dir, run.step, model_state=full["model"], state=state,
                               keep=run.cfg.loop.keep)
    barrier(info)
    return path


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    lp, op = cfg.loop, cfg.optim
    torch.set_num_threads(lp.threads)
    device = info.device
    run = _setup(cfg, info)
    optimizer, scheduler, stream, gens = run.optimizer, run.scheduler, run.stream, run.gens
    flow_cfg = cfg.flow

    log = None
    if info.is_main:
        bar = Progress(total=lp.steps, initial=run.step, enabled=lp.progress)
        log = MetricsLog(Path(cfg.run_dir) / "metrics.jsonl", console=True, bar=bar,
                         tensorboard_dir=Path(cfg.run_dir) / "tb" if lp.tensorboard else None)
    start_step, nonfinite_run, stopped = run.step, 0, "steps"
    window = _Window()
    last_loss = math.nan
    saved_at = -1
    try:
        with _StopFlag() as stop:
            batches = stream.loader(num_workers=lp.num_workers)
            while run.step < lp.steps:
                # agree before reading a batch, so the saved data state is exactly "before it"
                if any_rank(info, [stop.set])[0]:
                    stopped = "sigterm"
                    break
                batch = next(batches, None)
                out = None
                if batch is not None:
                    if device.type != "cpu":
                        batch = batch.to(device, non_blocking=True)
                    captions = drop_captions([m["caption"] for m in batch.meta], lp.caption_dropout,
                                             generator=gens.cpu)
                    t_S = sample_timesteps(batch.grid, config=flow_cfg, generator=gens.cpu)
                    out = run.objective(batch, captions, t_S, gens.noise)
                exhausted, bad_loss = any_rank(info, [batch is None, out is not None and
                                                      not bool(torch.isfinite(out.loss))])
                if exhausted:
                    stopped = "data_exhausted"
                    break
                optimizer.zero_grad(set_to_none=True)
                reason = "nonfinite_loss" if bad_loss else None
                if reason is None:
                    out.loss.backward()  # DDP all-reduces (averages) gradients here
                    clip = op.grad_clip if op.grad_clip > 0 else math.inf
                    grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(run.trained.parameters(), clip))
                    reason = None if math.isfinite(grad_norm) else "nonfinite_grad"
                if reason is not None:  # skip on every rank: no optimizer, scheduler or EMA step
                    optimizer.zero_grad(set_to_none=True)
                    run.nonfinite_total += 1
                    nonfinite_run += 1
                    if log is not None:
                        log.log(run.step, {"skipped_step": reason, "nonfinite_total": run.nonfinite_total})
                    if nonfinite_run >= lp.max_nonfinite:
                        raise RuntimeError(f"{nonfinite_run} non-finite steps in a row at step {run.step} "
                                           f"(last: {reason}); stopping (loop.max_nonfinite={lp.max_nonfinite})")
                    continue
                nonfinite_run = 0
                optimizer.step()
                scheduler.step()
                run.ema.update(run.trained, step=run.step)  # warmed up: the early average forgets the init
                run.step += 1
                last_loss = float(out.loss.detach())
                window.add(loss=last_loss, grad_norm=grad_norm, batch=batch)
                if log is not None:
                    log.bar.update(run.step, last_loss)
                if run.step % lp.log_every == 0 or run.step == lp.steps:
                    record = window.record(info, lr=scheduler.get_last_lr()[0], skips=stream.skips,
                                           nonfinite_total=run.nonfinite_total)
                    if log is not None:
                        log.log(run.step, record)
                if run.step % lp.ckpt_every == 0:
                    _save(run)
                    saved_at = run.step
        if saved_at != run.step:
            _save(run)
    finally:
        if log is not None:
            log.close()
    return {"step": run.step, "start_step": start_step, "loss": last_loss, "stopped": stopped,
            "nonfinite": run.nonfinite_total, "skipped": stream.skips, "run_dir": cfg.run_dir,
            "checkpoint": str(latest_checkpoint(run.ckpt_dir)), "rank": info.rank, "world_size": info.world_size}
