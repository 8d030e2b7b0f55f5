"""End-to-end training benchmark: useful tokens/s and loss per useful token, per batching.

    python benchmarks/e2e.py [--quick] [--out DIR] [--seed N] [--steps N] [--max-len L] [--rows B]
                             [--budget N]

The same model (tiny DiT + tiny text encoder, fp32, one torch thread, the "cpu"
attention backend), the same initial weights and the same compute budget under five
ways of batching the same stream of synthetic clips (`train.synth.make_sample`), each
budget-resized to at most N tokens (--budget, default L: one clip may fill a row):

    packed (sized) our default: StreamPacker with sizing="plan" (plan_sized): each clip's
                   size chosen with its row from its native size, online, 16 open rows of L,
                   decoded (here: resized from memory) once at that size
    packed (bfd)   whole samples at their plain budget fit, online best fit with 16 open rows;
                   several samples per row, each sample its own attention segment
    pad-to-max     one sample per row of N slots (the largest sample), padded to N; a step
                   holds B x L / N such rows
    buckets        Open-Sora-style: each clip resized to cover a (resolution, frames, aspect)
                   bucket of at most N tokens and centre-cropped; a row of L holds as many
                   same-bucket samples as fit, i.e. a bucket batch of floor(L / bucket) clips
                   (the bucket table of benchmarks/packing.py, resolutions scaled to the clips)
    next_fit       our packer with the NaViT greedy policy, rows of L

With N < L (e.g. L=2048, N=1024, NaViT's usual setting) packers can put several full-size
clips in one row; pad-to-max and buckets keep their natural unit (a padded sample, a
bucket batch) and get the same slots per step.

Compute budget: every batching runs the same number of optimizer steps of B x L token
slots (forward + backward + AdamW, same LR schedule). Linear layers cost the same per
slot for all; self-attention costs the sum of squared segment lengths, which differs
(logged as `attn pairs`: padding runs are segments too). Steps are interleaved round
robin across the batchings, so load from other processes on a shared machine hits all
four alike. Data preparation (clip synthesis, budget resize, patchify, bucket crops) and
row planning happen before the timed loop; `pack` runs between steps, outside the timer.

Metrics per batching:
    useful tokens/s   non-padding tokens trained on / wall time of the timed steps (the first
                      step, which allocates, is not timed); bucket crops are never counted,
                      since they are not in the batch; `lost` is their share of the source
                      (the resized clip before the crop)
    us/useful token   the inverse, in microseconds
    fill              useful tokens / token slots
    attn pairs        query-key pairs of self-attention per step (sum of squared segment
                      lengths, padding segments included): the term that is not per slot
    eval loss         flow loss of a held-out set of clips at fixed t and noise, every few
                      steps; compared at equal useful tokens seen (linear interpolation at the
                      smallest total any batching reached) and at equal steps (the end)
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patchpack.benchmarks import buckets
from patchpack.benchmarks.common import (
    base_parser,
    machine_info,
    markdown_table,
    pass_fail,
    save_figure,
    try_pyplot,
    write_results,
)
from patchpack.model import DiT, dit_config, flow_loss
from patchpack.model.text import build_text_encoder, drop_captions
from patchpack.packer import (
    PackerConfig,
    PatchedSample,
    StreamPacker,
    UnsizedSample,
    pack,
    patch_grid,
    patchify,
    plan_packs,
    prepare_sample,
    resize_video,
)
from patchpack.packer.bins import make_engine
from patchpack.train.data.media_decode import to_video_CTHW
from patchpack.train.data.synth import make_sample
from patchpack.train.loops.optim import adamw, warmup_cosine

PATCH = (1, 8, 8)  # pixel space: 3 x 8 x 8 = 192 features a token; a 64 px side is 8 tokens
MAX_FRAMES = 8  # leading frames kept (1 s of the synth's 8 fps clips)
BUFFER = 16  # open rows of the online packers
RES_SCALE = 0.25  # Open-Sora's 144p..1080p classes x 1/4 = 36p..270p: the synth clips are 64-256 px
LR, WARMUP, GRAD_CLIP, CAPTION_DROPOUT = 1e-3, 5, 1.0, 0.1
LOSS_TOL = 0.02  # "equal" loss: within 2%, since a few held-out clips give a noisy estimate
TARGETS = {"vs_pad": 1.5, "vs_buckets": 1.2}
BATCHINGS = ("packed (sized)", "packed (bfd)", "pad-to-max", "buckets", "next_fit")
PACKED = BATCHINGS[0]  # the batching the targets and ratios speak of: what training uses by default


# ---------------------------------------------------------------------------
# Open-Sora-style buckets at the synthetic clips' scale (table: benchmarks/packing.py)
# ---------------------------------------------------------------------------
def assign_bucket(frames: int, height: int, width: int, *, budget: int) -> tuple[int, int, int] | None:
    """The (frames, rows, cols) bucket keeping the most tokens, never upscaling the area; None if none fits.

    buckets.assign_bucket at the synthetic clips' scale (RES_SCALE), in pixel-space patches.
    """
    (_, f, _), rows, cols, tokens = buckets.assign_bucket(
        min(frames, MAX_FRAMES), height / width, (height // PATCH[1]) * (width // PATCH[2]), budget=budget,
        grid_of=lambda p, a: buckets.bucket_grid(p * RES_SCALE, a, PATCH[1]))
    return (f, rows, cols) if tokens else None


def bucket_sample(video_CTHW: torch.Tensor, bucket: tuple[int, int, int], *, key: str,
                  meta: dict) -> tuple[PatchedSample, float]:
    """Keep the bucket's leading frames, resize to cover its size (aspect kept), centre-crop, patchify.

    Also returns the tokens the crop cut away (frames x cropped area / patch area).
    """
    frames, rows, cols = bucket
    th, tw = rows * PATCH[1], cols * PATCH[2]
    _, _, h, w = video_CTHW.shape
    s = max(th / h, tw / w)
    rh, rw = max(th, math.ceil(h * s)), max(tw, math.ceil(w * s))
    x_TCHW = video_CTHW[:, :frames].transpose(0, 1)
    x_TCHW = F.interpolate(x_TCHW, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - th) // 2, (rw - tw) // 2
    x_CTHW = x_TCHW[:, :, top : top + th, left : left + tw].transpose(0, 1).contiguous()
    tokens, coords = patchify(x_CTHW, PATCH)
    cropped = frames * (rh * rw - th * tw) / (PATCH[1] * PATCH[2])
    return PatchedSample(tokens, coords, patch_grid(frames, th, tw, PATCH), key=key, meta=meta), cropped


# ---------------------------------------------------------------------------
# Data: one stream of clips, prepared once per batching's needs
# ---------------------------------------------------------------------------
@dataclass
class Clip:
    fit: PatchedSample  # budget-resized (prepare_sample): what packers and pad-to-max train on
    bucket: PatchedSample | None  # bucket-cropped; None when no bucket fits (the clip is lost)
    cropped: float = 0.0  # tokens of the bucket-resized clip outside its centre crop
    unsized: UnsizedSample | None = None  # native size + frames: what sized packing plans with


def make_clip(rng: random.Random, gen: torch.Generator, *, cfg: PackerConfig, key: str) -> Clip:
    frames_THWC, caption, _ = make_sample(rng)
    frames_THWC = frames_THWC[:MAX_FRAMES]  # both paths keep only leading frames: convert no more
    video_CTHW = to_video_CTHW(frames_THWC)
    meta = {"caption": caption}
    fit = prepare_sample(video_CTHW, config=cfg, generator=gen, key=key, meta=meta)
    t, h, w = frames_THWC.shape[:3]
    unsized = UnsizedSample((t, h, w), torch.from_numpy(np.ascontiguousarray(frames_THWC)), key=key, meta=meta)
    bucket = assign_bucket(t, h, w, budget=cfg.token_budget)
    if bucket is None:
        return Clip(fit, None, unsized=unsized)
    return Clip(fit, *bucket_sample(video_CTHW, bucket, key=key, meta=meta), unsized=unsized)


def decode_frames(sample: UnsizedSample, size: tuple[int, int, int]) -> torch.Tensor:
    """The sized packer's decode: the clip's frames at the planned (T, H, W) (here from memory)."""
    video = to_video_CTHW(sample.payload.numpy())
    return resize_video(video, size, patch=PATCH)


def batch_samples(batch) -> list[PatchedSample]:
    """A packed batch back into its samples (sized packing decides tokens as it packs)."""
    tokens, coords = batch.split(batch.tokens), batch.split(batch.coords)
    return [PatchedSample(t, c, tuple(g), k, m) for t, c, g, k, m in
            zip(tokens, coords, batch.grid.tolist(), batch.keys, batch.meta, strict=True)]


class RowFormer:
    """Turns the clip stream into closed rows (lists of clip indices) for one batching.

    Rows are `row_len` slots: the budget for pad-to-max (one padded sample), L for the rest.
    Only closed rows are used: an endless training stream never emits the part-full rows a
    finite one would flush at its end.
    """

    def __init__(self, name: str, max_len: int, *, budget: int) -> None:
        self.name, self.max_len = name, max_len
        self.row_len = budget if name == "pad-to-max" else max_len
        self.rows: list[list[int]] = []
        self.engine = {"packed (bfd)": lambda: make_engine("bfd", max_len, open_bins=BUFFER),
                       "next_fit": lambda: make_engine("next_fit", max_len)}.get(name, lambda: None)()
        self.open_buckets: dict[tuple, list[int]] = {}
        self.sized: StreamPacker | None = None
        self.sized_rows: list[list[PatchedSample]] = []  # sized packing: the materialised rows
        if name == "packed (sized)":
            cfg = PackerConfig(patch=PATCH, max_len=max_len, rows=1, max_frames=MAX_FRAMES,
                               max_tokens_per_sample=budget, buffer=BUFFER, sizing="plan")
            self.sized = StreamPacker(cfg, decode=decode_frames)

    def sample(self, clip: Clip) -> PatchedSample | None:
        return clip.bucket if self.name == "buckets" else clip.fit

    def add(self, i: int, clip: Clip) -> None:
        if self.sized is not None:  # sizes chosen with the row, decoded when the row closes
            for batch in self.sized.pack([clip.unsized]):
                self.sized_rows.append(batch_samples(batch))
                self.rows.append(list(range(batch.num_samples)))
            return
        s = self.sample(clip)
        if s is None:
            return  # no bucket: lost
        if self.engine is not None:
            self.engine.add(i, len(s))
            self.rows += self.engine.closed
            self.engine.closed = []
        elif self.name == "pad-to-max":
            self.rows.append([i])
        else:  # buckets: one open row per bucket, closed when the next sample would not fit
            row = self.open_buckets.setdefault(s.grid, [])
            row.append(i)
            if (len(row) + 1) * len(s) > self.max_len:
                self.rows.append(self.open_buckets.pop(s.grid))


def rows_per_step(former: RowFormer, rows: int) -> int:
    """Rows of `former.row_len` that make up `rows` x L slots (main checks the division)."""
    return rows * former.max_len // former.row_len


def make_stream(*, steps: int, rows: int, seed: int, cfg: PackerConfig,
                max_clips: int) -> tuple[list[Clip], dict[str, RowFormer]]:
    """Clips until every batching has closed rows for `steps` steps of `rows` x L slots."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    formers = {name: RowFormer(name, cfg.max_len, budget=cfg.token_budget) for name in BATCHINGS}
    need = {n: steps * rows_per_step(f, rows) for n, f in formers.items()}
    clips: list[Clip] = []
    while any(len(f.rows) < need[n] for n, f in formers.items()):
        if len(clips) >= max_clips:
            short = {n: len(f.rows) for n, f in formers.items()}
            raise ValueError(f"{max_clips} clips gave too few rows {short} for {need}; raise --max-clips")
        clips.append(make_clip(rng, gen, cfg=cfg, key=f"train/{len(clips):05d}"))
        for f in formers.values():
            f.add(len(clips) - 1, clips[-1])
    return clips, formers


def step_batch(clips: list[Clip], former: RowFormer, step: int, rows: int):
    """The PackedBatch of `rows` x L slots for one step, and the source tokens of its clips.

    Source: the trained tokens plus, for buckets, those their crops cut away. (The budget-resized
    clip is no yardstick for buckets: a bucket may trade frames for area and hold more tokens.)
    """
    n = rows_per_step(former, rows)
    bins = former.rows[step * n : (step + 1) * n]
    if former.sized is not None:
        samples = [s for r in range(step * n, (step + 1) * n) for s in former.sized_rows[r]]
    else:
        samples = [former.sample(clips[i]) for b in bins for i in b]
    local, k = [], 0
    for b in bins:
        local.append(list(range(k, k + len(b))))
        k += len(b)
    source = sum(len(s) for s in samples)
    if former.name == "buckets":
        source += sum(clips[i].cropped for b in bins for i in b)
    return pack(samples, local, former.row_len, rows=n), source


def attention_pairs(batch) -> tuple[int, int]:
    """Self-attention query-key pairs of a batch: (sample segments, padding segments).

    Attention FLOPs are ~4 x hidden x pairs per layer forward, quadratic in each segment's
    length and independent of how segments are laid out in rows.
    """
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
    sq = lengths * lengths
    pad = batch.segment_sample < 0
    return int(sq[~pad].sum()), int(sq[pad].sum())


# ---------------------------------------------------------------------------
# Training: one run per batching, same init
# ---------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    dit: DiT
    encoder: nn.Module
    params: nn.ModuleDict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator  # timesteps, noise, caption dropout
    log: dict = field(default_factory=lambda: {"step_s": [], "useful": [], "slots": [], "source": [],
                                               "samples": [], "attn_useful": [], "attn_pad": [],
                                               "train_loss": [], "eval": []})


def make_run(name: str, *, seed: int, steps: int, depth: int | None) -> Run:
    torch.manual_seed(seed)  # the same initial weights for every batching
    encoder = build_text_encoder("tiny")
    extra = {} if depth is None else {"depth": depth}
    dit = DiT(dit_config("tiny", in_channels=3, patch=PATCH, text_dim=encoder.dim, attn_backend="cpu", **extra))
    params = nn.ModuleDict({"dit": dit, "text": encoder}).train()
    optimizer = adamw(params, lr=LR, weight_decay=0.0, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=WARMUP, total=steps, min_ratio=0.1))
    return Run(name, dit, encoder, params, optimizer, scheduler, torch.Generator().manual_seed(seed))


def train_step(run: Run, batch) -> tuple[float, float]:
    """One optimizer step; returns (loss, wall seconds of text encoder + DiT forward/backward + AdamW)."""
    captions = drop_captions([m["caption"] for m in batch.meta], CAPTION_DROPOUT, generator=run.gen)
    t0 = time.perf_counter()
    text_tokens, text_lengths = run.encoder(captions)
    loss = flow_loss(run.dit, batch, text_tokens, text_lengths, generator=run.gen).loss
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.params.parameters(), GRAD_CLIP)
    run.optimizer.step()
    run.scheduler.step()
    seconds = time.perf_counter() - t0
    value = float(loss.detach())
    if not math.isfinite(value):
        raise RuntimeError(f"{run.name}: non-finite training loss {value}")
    return value, seconds


@dataclass
class EvalSet:
    batch: object  # PackedBatch of the held-out clips (budget-resized, whatever the batching trains on)
    captions: list[str]
    t_S: torch.Tensor  # fixed timesteps, spread over (0, 1)
    seed: int  # fixed noise


def make_eval_set(n: int, *, seed: int, cfg: PackerConfig) -> EvalSet:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    samples = [make_clip(rng, gen, cfg=cfg, key=f"eval/{i:03d}").fit for i in range(n)]
    plan = plan_packs([len(s) for s in samples], cfg.max_len, "ffd")
    batch = pack(samples, plan, cfg.max_len)
    return EvalSet(batch, [m["caption"] for m in batch.meta], torch.linspace(0.1, 0.9, n), seed)


@torch.no_grad()
def evaluate(run: Run, ev: EvalSet) -> float:
    text_tokens, text_lengths = run.encoder(ev.captions)
    gen = torch.Generator().manual_seed(ev.seed)
    return float(flow_loss(run.dit, ev.batch, text_tokens, text_lengths, generator=gen, t_S=ev.t_S).loss)


def train_all(clips: list[Clip], formers: dict[str, RowFormer], ev: EvalSet, *, steps: int, rows: int,
              eval_every: int, seed: int, depth: int | None) -> list[Run]:
    runs = [make_run(name, seed=seed, steps=steps, depth=depth) for name in BATCHINGS]
    for run in runs:
        run.log["eval"].append({"step": 0, "useful_tokens": 0, "loss": evaluate(run, ev)})
    for step in range(steps):
        for run in runs:  # round robin: machine load hits every batching alike
            batch, source = step_batch(clips, formers[run.name], step, rows)
            loss, seconds = train_step(run, batch)
            lg = run.log
            lg["step_s"].append(seconds)
            lg["useful"].append(int(batch.num_tokens.sum()))
            lg["slots"].append(batch.shape[0] * batch.shape[1])
            lg["source"].append(source)
            lg["samples"].append(batch.num_samples)
            attn_useful, attn_pad = attention_pairs(batch)
            lg["attn_useful"].append(attn_useful)
            lg["attn_pad"].append(attn_pad)
            lg["layout"] = batch.shape
            lg["train_loss"].append(loss)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                lg["eval"].append({"step": step + 1, "useful_tokens": sum(lg["useful"]), "loss": evaluate(run, ev)})
        print(f"step {step + 1}/{steps}: " + "  ".join(f"{r.name} {r.log['train_loss'][-1]:.3f}" for r in runs), flush=True)
    return runs


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def summarise(run: Run) -> dict:
    lg = run.log
    timed = slice(1, None) if len(lg["step_s"]) > 1 else slice(None)  # step 1 allocates: not timed
    seconds, useful = sum(lg["step_s"][timed]), sum(lg["useful"][timed])
    return {
        "batching": run.name,
        "steps": len(lg["step_s"]),
        "useful_tokens": sum(lg["useful"]),
        "slots": sum(lg["slots"]),
        "layout": list(lg["layout"]),  # (rows, row length) of a step
        "attn_pairs_per_step": (sum(lg["attn_useful"]) + sum(lg["attn_pad"])) / len(lg["attn_useful"]),
        "attn_pad_share": sum(lg["attn_pad"]) / max(sum(lg["attn_useful"]) + sum(lg["attn_pad"]), 1),
        "samples": sum(lg["samples"]),
        "fill": sum(lg["useful"]) / max(sum(lg["slots"]), 1),
        "lost": 1 - sum(lg["useful"]) / max(sum(lg["source"]), 1),  # crops: only buckets lose source tokens
        "timed_seconds": seconds,
        "useful_tokens_per_s": useful / seconds,
        "slots_per_s": sum(lg["slots"][timed]) / seconds,
        "us_per_useful_token": 1e6 * seconds / useful,
        "median_step_s": float(np.median(lg["step_s"][timed])),
        "final_eval_loss": lg["eval"][-1]["loss"],
        "eval": lg["eval"],
        "train_loss": lg["train_loss"],
        "useful_per_step": lg["useful"],
        "step_seconds": lg["step_s"],
    }


def add_equal_token_loss(results: list[dict]) -> int:
    """Eval loss of each batching interpolated at the smallest useful-token total any reached."""
    common = min(r["useful_tokens"] for r in results)
    for r in results:
        xs = [e["useful_tokens"] for e in r["eval"]]
        r["eval_loss_at_common_tokens"] = float(np.interp(common, xs, [e["loss"] for e in r["eval"]]))
    return common


def evaluate_targets(get: dict[str, dict]) -> list[list[str]]:
    p = get[PACKED]
    out = []
    for base, key, label in (("pad-to-max", "vs_pad", "pad-to-max"), ("buckets", "vs_buckets", "buckets")):
        b = get[base]
        ratio = p["useful_tokens_per_s"] / b["useful_tokens_per_s"]
        out.append([f"packed >= {TARGETS[key]}x {label} in useful tokens/s", f"{ratio:.2f}x", pass_fail(ratio >= TARGETS[key])])
        lp, lb = p["eval_loss_at_common_tokens"], b["eval_loss_at_common_tokens"]
        out.append([f"packed eval loss <= {label} at equal useful tokens (+{100 * LOSS_TOL:.0f}% tol)",
                    f"{lp:.4f} vs {lb:.4f} ({lp / lb:.3f}x)", pass_fail(lp <= lb * (1 + LOSS_TOL))])
    return out


def results_table(results: list[dict], common: int) -> str:
    get = {r["batching"]: r for r in results}
    p = get[PACKED]
    rows = []
    for r in results:
        rows.append([
            r["batching"], "{} x {}".format(*r["layout"]), f"{r['useful_tokens_per_s']:,.0f}",
            f"{r['us_per_useful_token']:.0f}", f"{p['useful_tokens_per_s'] / r['useful_tokens_per_s']:.2f}x",
            f"{100 * r['fill']:.1f}%", f"{100 * r['lost']:.1f}%", f"{r['slots_per_s']:,.0f}",
            f"{r['attn_pairs_per_step'] / 1e6:.2f}M ({100 * r['attn_pad_share']:.0f}% pad)", r["samples"],
            f"{r['useful_tokens']:,}", f"{r['eval_loss_at_common_tokens']:.4f}", f"{r['final_eval_loss']:.4f}",
        ])  # fmt: skip
    headers = ["batching", "rows x len", "useful tok/s", "us/useful tok", "packed / this", "fill", "lost",
               "slots/s", "attn pairs/step", "samples", "useful tokens", f"eval loss @ {common:,} tok",
               "eval loss @ end"]
    return markdown_table(headers, rows)


def plot(results: list[dict], common: int, path: Path) -> Path | None:
    plt = try_pyplot()
    if plt is None:
        return None
    colours = {"packed (sized)": "#13a", "packed (bfd)": "#6af", "pad-to-max": "#999", "buckets": "#c84",
               "next_fit": "#4a7"}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r["batching"] for r in results]
    vals = [r["useful_tokens_per_s"] for r in results]
    ax0.bar(range(len(names)), vals, color=[colours[n] for n in names])
    for i, r in enumerate(results):
        ax0.text(i, vals[i], f"fill {100 * r['fill']:.0f}%", ha="center", va="bottom", fontsize=8)
    ax0.set_xticks(range(len(names)), names, fontsize=8)
    ax0.set_ylabel("useful tokens / s (fwd + bwd + AdamW)")
    ax0.set_title("throughput, same slots per step")
    for r in results:
        ax1.plot([e["useful_tokens"] for e in r["eval"]], [e["loss"] for e in r["eval"]], "o-", ms=3,
                 color=colours[r["batching"]], label=r["batching"])
    ax1.axvline(common, color="k", lw=0.8, ls="--")
    ax1.set_xlabel("useful tokens seen")
    ax1.set_ylabel("held-out flow loss (fixed t, noise)")
    ax1.set_title("loss vs useful tokens")
    ax1.legend(fontsize=8)
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__, quick_help="smoke size (< 30 s on 2 cores)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per batching (default 4 quick, 48 full)")
    p.add_argument("--max-len", type=int, default=None, help="L, token slots per row (default 512 quick, 1024 full)")
    p.add_argument("--rows", type=int, default=2, help="rows of L per step")
    p.add_argument("--budget", type=int, default=None,
                   help="tokens per sample (default L); rows x L must be a multiple (pad-to-max rows are this long)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evals (default 2 quick, 6 full)")
    p.add_argument("--eval-clips", type=int, default=None, help="held-out clips (default 4 quick, 8 full)")
    p.add_argument("--depth", type=int, default=None, help="DiT depth (default: the tiny preset's; 2 quick)")
    p.add_argument("--max-clips", type=int, default=5000, help="stop with an error if the stream needs more clips")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    steps = args.steps or (4 if args.quick else 48)
    max_len = args.max_len or (512 if args.quick else 1024)
    eval_every = args.eval_every or (2 if args.quick else 6)
    eval_clips = args.eval_clips or (4 if args.quick else 8)
    depth = args.depth if args.depth is not None else (2 if args.quick else None)
    budget = args.budget or max_len
    if min(steps, max_len, args.rows, eval_every, eval_clips) < 1:
        raise ValueError(f"steps, max_len, rows, eval_every, eval_clips must be >= 1: {steps}, {max_len}, "
                         f"{args.rows}, {eval_every}, {eval_clips}")
    if not 1 <= budget <= max_len or (args.rows * max_len) % budget:
        raise ValueError(f"budget={budget} must be in [1, max_len={max_len}] and divide rows x max_len = "
                         f"{args.rows} x {max_len}, so pad-to-max rows of the budget fill a step's slots exactly")
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    cfg = PackerConfig(patch=PATCH, max_len=max_len, max_frames=MAX_FRAMES, max_tokens_per_sample=budget)
    clips, formers = make_stream(steps=steps, rows=args.rows, seed=args.seed, cfg=cfg, max_clips=args.max_clips)
    ev = make_eval_set(eval_clips, seed=args.seed + 10_000, cfg=cfg)
    prep_s = time.perf_counter() - t_start
    runs = train_all(clips, formers, ev, steps=steps, rows=args.rows, eval_every=eval_every, seed=args.seed, depth=depth)

    results = [summarise(r) for r in runs]
    common = add_equal_token_loss(results)
    get = {r["batching"]: r for r in results}
    targets = evaluate_targets(get)
    p = get[PACKED]
    ratios = {f"packed/{n}": p["useful_tokens_per_s"] / get[n]["useful_tokens_per_s"] for n in BATCHINGS[1:]}
    n_params = sum(x.numel() for x in runs[0].params.parameters())
    head = (f"# end-to-end benchmark: {steps} steps x {args.rows} rows x L={max_len} slots per batching, "
            f"tiny DiT depth {runs[0].dit.config.depth} + tiny text encoder ({n_params / 1e6:.2f}M params), "
            f"fp32, torch threads 1, attn cpu; patch {PATCH} on pixels, <= {MAX_FRAMES} frames, "
            f"budget {budget} tokens per sample; "
            f"{len(clips)} synthetic clips streamed (prepared in {prep_s:.1f} s), {eval_clips} held out")
    report = "\n\n".join([
        f"## Same compute: {steps} steps of {args.rows} x {max_len} slots, budget {budget}, steps interleaved"
        f"\n\n{results_table(results, common)}",
        "## Targets\n\n" + markdown_table(["target", "measured", "result"], targets),
    ])
    print(head)
    print(f"machine: {machine_info()}\n")
    print(report)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "e2e",
        "config": {"quick": args.quick, "seed": args.seed, "steps": steps, "rows": args.rows, "max_len": max_len,
                   "slots_per_step": args.rows * max_len, "budget": cfg.token_budget, "patch": PATCH,
                   "max_frames": MAX_FRAMES, "buffer": BUFFER, "depth": runs[0].dit.config.depth, "params": n_params,
                   "lr": LR, "warmup": WARMUP, "grad_clip": GRAD_CLIP, "caption_dropout": CAPTION_DROPOUT,
                   "eval_every": eval_every, "eval_clips": eval_clips, "eval_tokens": int(ev.batch.num_tokens.sum()),
                   "bucket_res_scale": RES_SCALE, "loss_tol": LOSS_TOL,
                   "compute_budget": "same optimizer steps of rows x max_len slots (pad-to-max: rows x max_len / budget rows "
                                     "of budget); steps interleaved round robin"},
        "machine": machine_info(),
        "clips": len(clips),
        "common_useful_tokens": common,
        "ratios_useful_tokens_per_s": ratios,
        "results": results,
        "targets": [{"target": t, "measured": m, "result": r} for t, m, r in targets],
        "seconds": time.perf_counter() - t_start,
    }
    stem = "e2e" if budget == max_len else f"e2e_L{max_len}_budget{budget}"  # one regime never overwrites the other
    png = plot(results, common, args.out / f"{stem}.png")
    write_results(args.out, stem, payload, head + "\n\n" + report, png)
    return payload


if __name__ == "__main__":
    main()
