"""The training loop: PackedStream -> caption dropout -> text encoder -> flow loss -> AdamW.

One process, or one per device under torchrun (DDP or FSDP2; train/parallel). The step
loop itself is skeleton.py's, shared with the VAE loop; `DiTTask` is this loop's part. Every state that shapes the next step is checkpointed, so a resume
with `loop.num_workers=0` continues bitwise: weights (DiT in model.safetensors, a
trainable text encoder in the state), EMA, optimizer, scheduler, and per rank the data
stream, the torch RNG and the loop's own generators (timesteps, noise, caption
dropout and the conditioning draw); run_state.py names every entry. SIGTERM saves a checkpoint at the next step
boundary and returns instead of dying mid-write.

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
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from patchpack.model import DiT, build_models, condition_batch, flow_loss
from patchpack.model.checkpoint import CONFIG_NAME
from patchpack.model.flow import sample_timesteps
from patchpack.model.text import drop_captions
from patchpack.train.data import NoUsableData, PackedStream, format_counts, merge_counts
from patchpack.train.options import to_yaml
from patchpack.train.parallel import (
    DistInfo,
    any_rank,
    apply_compile,
    apply_grad_checkpointing,
    autocast,
    autocast_dtype,
    barrier,
    check_parallel,
    check_precision,
    close_distributed,
    full_tensors,
    gather_to_main,
    init_distributed,
    local_norm,
    shard_like,
    shard_optimizer_state,
    sum_ranks,
    wrap_data_parallel,
)
from patchpack.train.stop import StopRequested

from .checkpoint import latest_checkpoint
from .config import TrainConfig, check_loop
from .metrics import MetricsLog, Progress
from .optim import EMA, adamw, warmup_cosine
from .run_state import TRAINED_PARTS, RunState, load_resume, load_weights, save_run_state
from .skeleton import StepOutcome, run_loop

__all__ = ["train", "DiTTask", "FlowObjective", "no_data_error", "SKIP_LOG"]

SKIP_LOG = "skipped.jsonl"  # in run_dir: one line per skipped sample (every rank and worker appends)


def no_data_error(skips: dict[str, int], *, resumed: bool) -> NoUsableData:
    """The error of a run whose data ended before its first step: it must not pass for a trained run."""
    if resumed and not skips:
        return NoUsableData("the data stream of the checkpoint is already at its end (data.epochs); "
                            "raise data.epochs or start a new run_dir")
    n = sum(skips.values())
    what = f"skipped {n} samples ({format_counts(skips)}), see {SKIP_LOG} in run_dir" if n else "the shards hold no samples"
    return NoUsableData(f"the data ended before the first step, with no usable sample: {what}", skips)


def _trained(model: DiT, encoder: nn.Module) -> nn.ModuleDict:
    """The modules the optimizer and EMA own: the DiT, plus the encoder if trainable."""
    dit, text = TRAINED_PARTS
    parts = {dit: model}
    if getattr(encoder, "trainable", False):
        parts[text] = encoder
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


def _check(cfg: TrainConfig) -> None:
    check_loop(cfg.loop, data=cfg.data)
    if cfg.loop.max_nonfinite < 1:
        raise ValueError(f"loop.max_nonfinite must be >= 1, got {cfg.loop.max_nonfinite}")
    check_parallel(cfg.loop.parallel)  # before any process group or model exists
    check_precision(cfg.loop.precision)


def _rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the configured seed (a 1-process run is unchanged); others get their own."""
    return seed + 1_000_003 * rank


class _Generators:
    """The loop's RNG: `cpu` draws caption dropout and timesteps, `noise` the flow noise
    (the same generator on CPU; one on the device under CUDA, so noise is drawn there),
    `cond` the conditioning strategies (its own, so turning conditioning on leaves the
    timesteps and noise of a run as they were)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cpu = torch.Generator().manual_seed(seed)
        self.noise = self.cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed + 1)
        self.cond = torch.Generator().manual_seed(seed + 2)
        self.device = device

    def state(self) -> dict:
        s = {"torch": torch.get_rng_state(), "loop": self.cpu.get_state(), "cond": self.cond.get_state()}
        if self.device.type == "cuda":
            s["noise"] = self.noise.get_state()
            s["cuda"] = torch.cuda.get_rng_state(self.device)
        return s

    def load(self, s: dict) -> None:
        torch.set_rng_state(s["torch"])
        self.cpu.set_state(s["loop"])
        if "cond" in s:  # checkpoints from before conditioning existed start it at its seed
            self.cond.set_state(s["cond"])
        if self.device.type == "cuda" and "noise" in s:
            self.noise.set_state(s["noise"])
            torch.cuda.set_rng_state(s["cuda"], self.device)


class _Window:
    """Sums between two metric records, reduced over ranks when one is written."""

    KEYS = ("loss", "grad_norm", "steps", "tokens", "slots", "samples", "given")

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
        if batch.given is not None:
            s["given"] += int(batch.given.sum())  # host sync under CUDA, on conditioned steps only

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
            "given_fraction": total["given"] / max(total["tokens"], 1),  # valid tokens given as conditions
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


class DiTTask:
    """Everything one rank trains with, and one step of it (skeleton.TrainingTask)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        lp, op = cfg.loop, cfg.optim
        self.info, self.device = info, info.device
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        # training never extrapolates RoPE: the grids it sees define rope_train_grid (recorded below)
        trained_as = replace(cfg.model, patch=tuple(cfg.packer.patch), rope_extrapolation="none")
        models = build_models(trained_as, text=cfg.text, vae=cfg.vae, load_vae_weights=False)
        resolved = replace(models.dit.config, rope_extrapolation=cfg.model.rope_extrapolation)
        self.cfg = replace(cfg, model=resolved)  # what config.yaml and checkpoints store
        self.model, self.encoder = models.dit.to(self.device), models.text_encoder.to(self.device)
        self.trained = _trained(self.model, self.encoder).train()
        self.gens = _Generators(_rank_seed(cfg.seed, info.rank), self.device)
        self.stream = PackedStream(cfg.data, cfg.packer, rank=info.rank, world_size=info.world_size,
                                   skip_log=Path(cfg.run_dir) / SKIP_LOG)
        self.step, self.nonfinite_total, self.nonfinite_run = 0, 0, 0
        self.seen_grid = [1, 1, 1]  # the largest patch grid per axis in the data so far
        self.last_loss = math.nan
        self.window = _Window()

        state = load_resume(lp.resume, self.ckpt_dir)  # every rank reads the same checkpoint
        if state is not None:  # weights before any sharding
            load_weights(self.model, state.weights, state)
            if "text" in self.trained:
                load_weights(self.encoder, state.text, state, "text-encoder weights")
            mine = state.rank(info.rank, info.world_size)
            self.stream.load_state_dict(mine["data"])
            self.gens.load(mine["rng"])
            self.step, self.nonfinite_total = state.step, int(state.nonfinite)
            self.seen_grid = list(state.seen_grid or self.seen_grid)
        self.start_step = self.step

        # knobs from the outside (none renames a parameter), then data parallelism, then the
        # optimizer over the final (possibly sharded) parameters: torchtitan's order
        if lp.grad_checkpointing:
            apply_grad_checkpointing(self.model)
        if lp.compile:
            apply_compile(self.model)
        amp_dtype = autocast_dtype(lp.precision, self.device)
        self.objective = wrap_data_parallel(FlowObjective(self.trained, self.encoder, amp_dtype=amp_dtype), info,
                                            parallel=lp.parallel, blocks=self.model.blocks)
        self.optimizer = adamw(self.trained, lr=op.lr, weight_decay=op.weight_decay, betas=tuple(op.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup=op.warmup, total=lp.steps, min_ratio=op.min_lr_ratio))
        self.ema = EMA(self.trained, decay=lp.ema_decay)
        if state is not None:
            sharded = dict(self.ema.shadow)
            self.ema.load_state_dict(state.ema)
            self.ema.shadow = {k: shard_like(v, sharded[k]) for k, v in self.ema.shadow.items()}
            self.optimizer.load_state_dict(shard_optimizer_state(state.optimizer, self.optimizer))
            self.scheduler.load_state_dict(state.scheduler)

        self.metrics = None
        if info.is_main:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(self.cfg))
            bar = Progress(total=lp.steps, initial=self.step, enabled=lp.progress)
            self.metrics = MetricsLog(Path(cfg.run_dir) / "metrics.jsonl", console=True, bar=bar,
                                      tensorboard_dir=Path(cfg.run_dir) / "tb" if lp.tensorboard else None)
        self.batches = self.stream.loader(num_workers=lp.num_workers)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "checkpoints"

    def saved_config(self) -> TrainConfig:
        """The resolved config with the grid seen so far: what sampling rebuilds the model from."""
        return replace(self.cfg, model=replace(self.cfg.model, rope_train_grid=tuple(self.seen_grid)))

    # -- skeleton.TrainingTask

    def agree(self, flags: list[bool]) -> list[bool]:
        return any_rank(self.info, flags)

    def train_step(self) -> StepOutcome:
        lp, op = self.cfg.loop, self.cfg.optim
        try:
            batch, stop = next(self.batches, None), False
        except StopRequested:  # a signal while the stream read (or skipped) records: its state is whole
            batch, stop = None, True
        out = None
        if batch is not None:
            if self.device.type != "cpu":
                batch = batch.to(self.device, non_blocking=True)
            captions = drop_captions([m["caption"] for m in batch.meta], lp.caption_dropout,
                                     generator=self.gens.cpu)
            t_S = sample_timesteps(batch.grid, config=self.cfg.flow, generator=self.gens.cpu)
            if self.cfg.conditioning.enabled:
                batch, _ = condition_batch(batch, self.cfg.conditioning, patch=tuple(self.cfg.packer.patch),
                                           channels=self.model.config.in_channels, generator=self.gens.cond)
            out = self.objective(batch, captions, t_S, self.gens.noise)
        stop, exhausted, bad_loss = self.agree([stop, batch is None and not stop,
                                                out is not None and not bool(torch.isfinite(out.loss))])
        if stop:
            return "stopped"
        if exhausted:
            if self.step == self.start_step:
                raise no_data_error(self.stream.skips, resumed=self.start_step > 0)
            return "exhausted"
        self.optimizer.zero_grad(set_to_none=True)
        reason = "nonfinite_loss" if bad_loss else None
        if reason is None:
            out.loss.backward()  # DDP all-reduces (averages) gradients here
            clip = op.grad_clip if op.grad_clip > 0 else math.inf
            grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(self.trained.parameters(), clip))
            reason = None if math.isfinite(grad_norm) else "nonfinite_grad"
        if reason is not None:  # skip on every rank: no optimizer, scheduler or EMA step
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            if self.metrics is not None:
                self.metrics.log(self.step, {"skipped_step": reason, "nonfinite_total": self.nonfinite_total})
            if self.nonfinite_run >= lp.max_nonfinite:
                raise FloatingPointError(f"{self.nonfinite_run} non-finite steps in a row at step {self.step} "
                                         f"(last: {reason}); stopping (loop.max_nonfinite={lp.max_nonfinite}); "
                                         "lower optim.lr or check the data")
            return "skipped"
        self.nonfinite_run = 0
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.trained, step=self.step)  # warmed up: the early average forgets the init
        self.step += 1
        self.seen_grid = [max(a, int(b)) for a, b in zip(self.seen_grid, batch.grid.max(0).values.tolist())]
        self.last_loss = float(out.loss.detach())
        self.window.add(loss=self.last_loss, grad_norm=grad_norm, batch=batch)
        if self.metrics is not None:
            self.metrics.bar.update(self.step, self.last_loss)
        return "done"

    def log(self) -> None:
        record = self.window.record(self.info, lr=self.scheduler.get_last_lr()[0], skips=self.stream.skips,
                                    nonfinite_total=self.nonfinite_total)
        if self.metrics is not None:
            self.metrics.log(self.step, record)

    def save(self) -> Path | None:
        """Collective: rank 0 writes a checkpoint, the others wait until it is in place."""
        info, has_text = self.info, "text" in self.trained
        ranks = gather_to_main(info, {"data": self.stream.state_dict(), "rng": self.gens.state()})
        # full tensors on every rank first: gathering FSDP shards is itself a collective
        full = full_tensors({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                             "optimizer": self.optimizer.state_dict(),
                             "text": self.encoder.state_dict() if has_text else None})
        path = None
        if info.is_main:
            config = self.saved_config()
            path = save_run_state(self.ckpt_dir, RunState(
                step=self.step, config=to_yaml(config), weights=full["model"], optimizer=full["optimizer"],
                scheduler=self.scheduler.state_dict(), ranks=ranks, model_config=(CONFIG_NAME, config.model.to_dict()),
                ema=full["ema"], text=full["text"], nonfinite=self.nonfinite_total, seen_grid=self.seen_grid,
                world_size=info.world_size), keep=self.cfg.loop.keep)
        barrier(info)
        return path

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    lp = cfg.loop
    torch.set_num_threads(lp.threads)
    task = DiTTask(cfg, info)
    try:
        stopped = run_loop(task, steps=lp.steps, log_every=lp.log_every, ckpt_every=lp.ckpt_every,
                           time_limit=lp.time_limit)
    finally:
        task.close()
    return {"step": task.step, "start_step": task.start_step, "loss": task.last_loss, "stopped": stopped,
            "nonfinite": task.nonfinite_total, "skipped": task.stream.skips, "run_dir": cfg.run_dir,
            "checkpoint": str(latest_checkpoint(task.ckpt_dir)), "rank": info.rank, "world_size": info.world_size,
            "seen_grid": task.seen_grid}
