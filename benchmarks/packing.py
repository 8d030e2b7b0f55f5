"""Packing benchmark: how much of each [B, L] slot budget holds real tokens, and at what cost.

    python benchmarks/packing.py [--quick] [--out DIR] [--seed N]

Inputs are a synthetic but realistic image/video mix (benchmarks/distributions.py),
mapped to a latent grid (causal VAE, 4x time, 8x space) and resized by the packer's
own `fit_budget` so that each sample has <= max_tokens_per_sample tokens at patch
(1, 2, 2). Two regimes per max_len L:
    budget=L   every sample gets the budget L (PackerConfig's default)
    hard       each sample draws its budget uniformly from L/2..L (samples comparable
               to L: the regime DESIGN.md, "The last few percent of fill", describes)

Methods, side by side in one run:
    pad-to-max     rows of B=8 samples in stream order, each padded to the batch's longest
    bucketing      Open-Sora-style buckets (resolution x frames x aspect, see BUCKETS below);
                   each sample is resized and centre-cropped to its bucket, then rows of L
                   hold as many same-bucket samples as fit
    next_fit, ffd  `plan_packs` policies (next_fit online; ffd offline over all samples)
    bfd buf=k      `plan_packs(..., "bfd", buffer=k)`, online with k open bins
    fill buf=k     `plan_packs_fill` (fill-to-exact, max_shrink=0.1) beside plain bfd

Metrics:
    fill      useful tokens / token slots spent (padding, and rows left part-full at the
              end of the finite stream, are waste)
    lost      share of source tokens (the fit_budget size) not trained on: cropped or
              snapped away by bucketing, or removed by fill-to-exact's shrinking
    changed   share of samples whose token count was reduced (cropped or shrunk)
    plan/s    planning throughput in samples/s, one thread, best of `repeats`
    pack GB/s `pack(...)` of the first 8 rows of the plan into real tensors (D=64 float32:
              16 latent channels x a 1x2x2 patch), counting the bytes of the tokens,
              coords and segment_ids it writes; x memcpy is that bandwidth over
              `dst.copy_(src)` of the same byte count, measured in the same run
    peak      extra peak RSS of one `pack` call, measured as the ru_maxrss delta in a
              fresh subprocess, beside the analytic size of the tensors pack returns
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common and distributions, run as a script

from _common import (  # noqa: E402
    base_parser,
    best_time,
    machine_info,
    markdown_table,
    pass_fail,
    run_child_json,
    save_figure,
    try_pyplot,
    write_json,
)
from distributions import MixConfig, describe, sample_native_sizes, to_latent  # noqa: E402

from patchpack.packer import PatchedSample, fit_budget, pack, plan_packs, plan_packs_fill  # noqa: E402

PATCH = (1, 2, 2)  # (pt, ph, pw) on the latent grid
DIM = 64  # token features: 16 latent channels x 1x2x2 patch, float32
PAD_BATCH = 8  # samples per pad-to-max batch
PACK_ROWS = 8  # rows materialised per pack() call
BUFFERS = (16, 64, 256)
MAX_SHRINK = 0.1  # fill-to-exact may remove at most 10% of a sample's tokens
TOKENS_PER_FRAME = 128  # max_frames = L / 128: a clip at full length keeps >= 128 tokens a frame (~144p)
TARGETS = {"bfd_fill": 0.995, "plan_per_s": 1e5, "pack_vs_memcpy": 0.5, "fill_exact": 0.999}

# ---------------------------------------------------------------------------
# Open-Sora-style bucket table (after opensora/datasets/aspect.py and bucket.py)
# ---------------------------------------------------------------------------
# Open-Sora names resolutions by pixel area (p x 16p/9), keeps 17 aspect ratios per
# resolution (height/width 0.38..2.08), and has a few frame-count buckets per
# resolution (1 for images, then 51/102/204 pixel frames in 1.2). Each sample goes
# to a (resolution, frames, aspect) bucket no larger than itself, is resized to cover
# it and centre-cropped; a batch holds samples of one bucket only. Our table keeps the
# resolutions and aspect ratios, uses finer power-of-two latent frame buckets, and
# picks deterministically the bucket that keeps the most tokens within the budget:
# that is kinder to bucketing than Open-Sora's random bucket choice.
BUCKET_RESOLUTIONS = (144, 240, 360, 480, 720, 1080)
BUCKET_FRAMES = (1, 4, 8, 16, 32, 64, 128)  # latent frames
BUCKET_ASPECTS = (0.38, 0.43, 0.48, 0.50, 0.53, 0.54, 0.56, 0.62, 0.67, 0.75, 1.00, 1.33, 1.50, 1.78, 1.89, 2.00, 2.08)  # h/w


def _bucket_patches(p: int, aspect_hw: float) -> tuple[int, int]:
    """(rows, cols) of 16-pixel patches of the bucket of area p x 16p/9 at height/width aspect_hw."""
    area = p * p * 16 / 9
    return max(1, round(math.sqrt(area * aspect_hw) / 16)), max(1, round(math.sqrt(area / aspect_hw) / 16))


BUCKETS = {(p, a): _bucket_patches(p, a) for p in BUCKET_RESOLUTIONS for a in BUCKET_ASPECTS}


# ---------------------------------------------------------------------------
# Workloads: native sizes -> latent grid -> fit_budget token counts
# ---------------------------------------------------------------------------
@dataclass
class Workload:
    max_len: int
    regime: str  # "budget=L" or "hard"
    latents: list[tuple[int, int, int]]  # native (frames, height, width) on the latent grid
    budgets: list[int]  # max_tokens_per_sample of each sample
    lengths: list[int]  # tokens after fit_budget: what whole-sample packers place


def make_workload(latents: list[tuple[int, int, int]], *, max_len: int, regime: str, seed: int) -> Workload:
    if regime == "budget=L":
        budgets = [max_len] * len(latents)
    else:
        rng = np.random.default_rng(seed)
        budgets = rng.integers(max_len // 2, max_len, size=len(latents), endpoint=True).tolist()
    # fit_budget keeps the first max_frames frames (no temporal resampling), then scales space
    max_frames = max_len // TOKENS_PER_FRAME
    lengths = []
    for (f, h, w), budget in zip(latents, budgets, strict=True):
        t, hh, ww = fit_budget(f, h, w, patch=PATCH, max_tokens=budget, max_frames=max_frames)
        lengths.append((t // PATCH[0]) * (hh // PATCH[1]) * (ww // PATCH[2]))
    return Workload(max_len, regime, latents, budgets, lengths)


# ---------------------------------------------------------------------------
# Methods: one function each, workload -> Plan (timed as a whole)
# ---------------------------------------------------------------------------
@dataclass
class Plan:
    bins: list[list[int]]  # rows of sample indices
    kept: list[int]  # tokens each sample is trained on (<= its fit_budget length)
    row_len: list[int]  # slots of each row (L, or the batch's longest for pad-to-max)


def pad_to_max(w: Workload) -> Plan:
    bins, row_len = [], []
    for start in range(0, len(w.lengths), PAD_BATCH):
        group = range(start, min(start + PAD_BATCH, len(w.lengths)))
        longest = max(w.lengths[i] for i in group)
        bins += [[i] for i in group]
        row_len += [longest] * len(group)
    return Plan(bins, w.lengths, row_len)


def assign_bucket(latent: tuple[int, int, int], budget: int) -> tuple[tuple[int, int, float], int]:
    """The (resolution, frames, aspect) bucket keeping the most tokens, and its token count (0: none fits)."""
    f, h, w = latent
    aspect = min(BUCKET_ASPECTS, key=lambda a: abs(math.log(a * w / h)))
    native_area = (h // PATCH[1]) * (w // PATCH[2])
    best, best_tokens = (0, 0, aspect), 0
    for p in BUCKET_RESOLUTIONS:
        rows, cols = BUCKETS[p, aspect]
        if rows * cols > native_area:
            break  # never upscale
        for frames in BUCKET_FRAMES:
            tokens = frames * rows * cols
            if frames <= f and tokens <= budget and tokens >= best_tokens:
                best, best_tokens = (p, frames, aspect), tokens
    return best, best_tokens


def bucketing(w: Workload) -> Plan:
    kept, bins, open_rows = [0] * len(w.lengths), [], {}
    for i, (latent, budget) in enumerate(zip(w.latents, w.budgets, strict=True)):
        key, tokens = assign_bucket(latent, budget)
        if tokens == 0:
            continue  # no bucket fits: the sample is lost entirely
        kept[i] = tokens
        row = open_rows.setdefault(key, [])
        row.append(i)
        if (len(row) + 1) * tokens > w.max_len:
            bins.append(open_rows.pop(key))
    bins += list(open_rows.values())  # end of stream: part-full rows still cost L slots
    return Plan(bins, kept, [w.max_len] * len(bins))


def _whole(w: Workload, bins: list[list[int]]) -> Plan:
    return Plan(bins, w.lengths, [w.max_len] * len(bins))


def next_fit(w: Workload) -> Plan:
    return _whole(w, plan_packs(w.lengths, w.max_len, "next_fit"))


def ffd(w: Workload) -> Plan:
    return _whole(w, plan_packs(w.lengths, w.max_len, "ffd"))


def bfd(w: Workload, *, buffer: int) -> Plan:
    return _whole(w, plan_packs(w.lengths, w.max_len, "bfd", buffer=buffer))


def fill_to_exact(w: Workload, *, buffer: int) -> Plan:
    bins, targets = plan_packs_fill(w.lengths, w.max_len, buffer=buffer, max_shrink=MAX_SHRINK)
    return Plan(bins, targets, [w.max_len] * len(bins))


METHODS: list[tuple[str, Callable[[Workload], Plan]]] = [
    (f"pad-to-max B={PAD_BATCH}", pad_to_max),
    ("bucketing (Open-Sora)", bucketing),
    ("next_fit", next_fit),
    ("ffd (offline)", ffd),
    *[(f"bfd buf={k}", partial(bfd, buffer=k)) for k in BUFFERS],
    *[(f"fill buf={k}", partial(fill_to_exact, buffer=k)) for k in BUFFERS],
]


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------
def plan_metrics(w: Workload, plan: Plan) -> dict:
    source, kept = sum(w.lengths), sum(plan.kept)
    return {
        "fill": kept / max(sum(plan.row_len), 1),
        "lost": 1 - kept / max(source, 1),
        "changed": sum(k < n for k, n in zip(plan.kept, w.lengths, strict=True)) / max(len(w.lengths), 1),
        "rows": len(plan.bins),
    }


def batch_inputs(plan: Plan, *, rows: int, generator: torch.Generator) -> tuple[list[PatchedSample], list[list[int]], int]:
    """Real tensors for the first `rows` rows of a plan: samples, the plan over them, and max_len."""
    bins = plan.bins[:rows]
    lengths = [plan.kept[i] for b in bins for i in b]
    tokens_ND = torch.randn(sum(lengths), DIM, generator=generator)  # one pool: each sample its own memory
    coords_N3 = torch.randint(0, 64, (sum(lengths), 3), generator=generator, dtype=torch.int32)
    samples, local, offset = [], [], 0
    for b in bins:
        local.append(list(range(len(samples), len(samples) + len(b))))
        for i in b:
            n = plan.kept[i]
            samples.append(PatchedSample(tokens_ND[offset : offset + n], coords_N3[offset : offset + n], (1, 1, n), key=str(i)))
            offset += n
    return samples, local, max(plan.row_len[:rows])


def packed_bytes(rows: int, max_len: int) -> int:
    """Bytes pack() writes: tokens [B,L,D] float32, coords [B,L,3] int32, segment_ids [B,L] int32."""
    return rows * max_len * (DIM * 4 + 3 * 4 + 4)


_copy_cache: dict[int, tuple[float, float]] = {}


def copy_seconds(nbytes: int, *, repeats: int) -> tuple[float, float]:
    """Best times of memcpy baselines over contiguous uint8 tensors of nbytes.

    (dst.copy_(src) into a buffer whose pages are already touched, src.clone() into
    a fresh allocation): pack() allocates its output on every call, so the second
    shows how much of its cost is the page faults of a new buffer.
    """
    if nbytes not in _copy_cache:
        src, dst = torch.ones(nbytes, dtype=torch.uint8), torch.zeros(nbytes, dtype=torch.uint8)
        copy_s = best_time(lambda: dst.copy_(src), repeats=max(repeats, 5))
        _copy_cache[nbytes] = copy_s, best_time(src.clone, repeats=max(repeats, 5))
    return _copy_cache[nbytes]


def pack_metrics(plan: Plan, *, repeats: int, seed: int) -> dict:
    samples, local, max_len = batch_inputs(plan, rows=PACK_ROWS, generator=torch.Generator().manual_seed(seed))
    seconds = best_time(lambda: pack(samples, local, max_len, rows=len(local)), repeats=max(repeats, 3))
    nbytes = packed_bytes(len(local), max_len)
    copy_s, clone_s = copy_seconds(nbytes, repeats=repeats)
    return {
        "pack_bytes": nbytes,
        "pack_gbps": nbytes / seconds / 1e9,
        "memcpy_gbps": nbytes / copy_s / 1e9,
        "clone_gbps": nbytes / clone_s / 1e9,
        "pack_vs_memcpy": copy_s / seconds,
        "pack_vs_clone": clone_s / seconds,
    }


# A fresh interpreter whose peak-RSS mark (VmHWM) is reset just before pack(), with a fixed
# mmap threshold so that large buffers are fresh mappings, never recycled heap pages.
_PEAK_CHILD = r"""
import json, sys
import torch
from patchpack.packer import PatchedSample, pack
def status():
    return {k: int(v.split()[0]) for k, v in (l.split(":", 1) for l in open("/proc/self/status")) if k in ("VmRSS", "VmHWM")}
a = json.loads(sys.stdin.read())
n = sum(a["lengths"])
tokens_ND, coords_N3 = torch.randn(n, a["dim"]), torch.zeros(n, 3, dtype=torch.int32)
samples, off = [], 0
for m in a["lengths"]:
    samples.append(PatchedSample(tokens_ND[off:off + m], coords_N3[off:off + m], (1, 1, m)))
    off += m
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status()
batch = pack(samples, a["plan"], a["max_len"], rows=len(a["plan"]))
after = status()
print(json.dumps({"rss_before_kib": before["VmRSS"], "hwm_after_kib": after["VmHWM"], "reset_ok": before["VmHWM"] == before["VmRSS"]}))
"""


def peak_memory(plan: Plan) -> dict:
    bins = plan.bins[:PACK_ROWS]
    local, lengths = [], []
    for b in bins:
        local.append(list(range(len(lengths), len(lengths) + len(b))))
        lengths += [plan.kept[i] for i in b]
    max_len = max(plan.row_len[: len(bins)])
    payload = {"lengths": lengths, "plan": local, "max_len": max_len, "dim": DIM}
    try:
        out = run_child_json(_PEAK_CHILD, payload, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    except (RuntimeError, OSError) as err:  # e.g. no /proc (not Linux): report the analytic size only
        print(f"note: peak RSS not measured ({str(err).splitlines()[0]})")
        out = None
    return {
        "peak_mib": None if out is None else (out["hwm_after_kib"] - out["rss_before_kib"]) / 1024,
        "hwm_reset_ok": None if out is None else out["reset_ok"],
        "output_mib": packed_bytes(len(bins), max_len) / 2**20,
    }


def run_method(w: Workload, name: str, fn: Callable[[Workload], Plan], *, repeats: int, materialise: bool, seed: int) -> dict:
    plan = fn(w)
    row = {"max_len": w.max_len, "regime": w.regime, "method": name, **plan_metrics(w, plan)}
    row["plan_samples_per_s"] = len(w.lengths) / best_time(lambda: fn(w), repeats=repeats, warmup=0)
    if materialise:
        row.update(pack_metrics(plan, repeats=repeats, seed=seed))
    return row


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def results_table(results: list[dict], max_len: int) -> str:
    get = {(r["regime"], r["method"]): r for r in results if r["max_len"] == max_len}
    rows = []
    for name, _ in METHODS:
        a, h = get[("budget=L", name)], get[("hard", name)]
        rows.append([
            name, _pct(a["fill"]), _pct(a["lost"]), _pct(a["changed"], 1),
            _pct(h["fill"]), _pct(h["lost"]), _pct(h["changed"], 1),
            f"{a['plan_samples_per_s']:,.0f}", f"{a['pack_gbps']:.2f}", f"{a['pack_vs_memcpy']:.2f}x", f"{a['pack_vs_clone']:.2f}x",
        ])  # fmt: skip
    headers = ["method", "fill", "lost", "changed", "fill hard", "lost hard", "changed hard", "plan samples/s", "pack GB/s", "x memcpy", "x alloc+copy"]
    return markdown_table(headers, rows)


def evaluate_targets(results: list[dict], max_lens: list[int]) -> list[list[str]]:
    def best(max_len: int, regime: str, prefix: str) -> dict:
        rows = [r for r in results if r["max_len"] == max_len and r["regime"] == regime and r["method"].startswith(prefix)]
        return max(rows, key=lambda r: r["fill"])

    def row(target: str, value: str, ok: bool) -> list[str]:
        return [target, value, pass_fail(ok)]

    out = []
    for max_len in max_lens:
        for regime in ("budget=L", "hard"):
            r = best(max_len, regime, "bfd")
            out.append(row(f"online bfd fill >= 99.5% (L={max_len}, {regime}, buffer<=256)", f"{_pct(r['fill'])} ({r['method']})", r["fill"] >= TARGETS["bfd_fill"]))
        r = best(max_len, "hard", "fill")
        out.append(row(f"fill-to-exact >= 99.9% (L={max_len}, hard)", f"{_pct(r['fill'], 3)} ({r['method']})", r["fill"] >= TARGETS["fill_exact"]))
    packers = [r for r in results if r["regime"] == "budget=L" and r["method"].startswith(("next_fit", "ffd", "bfd", "fill"))]
    for max_len in max_lens:
        slow = min((r for r in packers if r["max_len"] == max_len), key=lambda r: r["plan_samples_per_s"])
        out.append(row(f"planning >= 1e5 samples/s, 1 thread (L={max_len}, slowest packer)", f"{slow['plan_samples_per_s']:,.0f} ({slow['method']})", slow["plan_samples_per_s"] >= TARGETS["plan_per_s"]))
        worst = min((r for r in packers if r["max_len"] == max_len), key=lambda r: r["pack_vs_memcpy"])
        out.append(row(f"pack >= 50% of memcpy bandwidth (L={max_len}, worst packer)", f"{worst['pack_vs_memcpy']:.2f}x ({worst['method']})", worst["pack_vs_memcpy"] >= TARGETS["pack_vs_memcpy"]))
    return out


def plot(results: list[dict], max_lens: list[int], path: Path) -> Path | None:
    plt = try_pyplot()
    if plt is None:
        return None
    panels = [(m, g) for m in max_lens for g in ("budget=L", "hard")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5), sharey=True, squeeze=False)
    names = [n for n, _ in METHODS]
    for ax, (max_len, regime) in zip(axes[0], panels, strict=True):
        get = {r["method"]: r for r in results if r["max_len"] == max_len and r["regime"] == regime}
        fills = [100 * get[n]["fill"] for n in names]
        ax.barh(range(len(names)), fills, color=["#999"] * 2 + ["#4a7"] * (len(names) - 2 - len(BUFFERS)) + ["#36c"] * len(BUFFERS))
        ax.set_xlim(min(50.0, min(fills) - 2), 100)
        ax.axvline(100 * TARGETS["bfd_fill"], color="k", lw=0.8, ls="--")
        ax.set_title(f"L={max_len}, {regime}")
        ax.set_xlabel("useful-token fill (%)")
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__, quick_help="fewer samples and repeats (< 60 s on 2 cores)")
    p.add_argument("--samples", type=int, default=None, help="samples per workload (default 2000 quick, 20000 full)")
    p.add_argument("--max-lens", type=int, nargs="+", default=[4096, 16384], help="values of L")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (best of; default 2 quick, 3 full)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    n = args.samples or (2000 if args.quick else 20000)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(1)  # planning and copy bandwidth on one core
    t_start = time.perf_counter()

    sizes = sample_native_sizes(n, seed=args.seed, config=MixConfig())
    latents = [to_latent(s) for s in sizes]
    results, peaks = [], []
    for max_len in args.max_lens:
        for regime in ("budget=L", "hard"):
            w = make_workload(latents, max_len=max_len, regime=regime, seed=args.seed + 1)
            for name, fn in METHODS:
                results.append(run_method(w, name, fn, repeats=repeats, materialise=regime == "budget=L", seed=args.seed))
                if regime == "budget=L" and name == "bfd buf=64":
                    peaks.append({"max_len": max_len, "method": name, **peak_memory(fn(w))})

    print(f"# packing benchmark: {n} samples, seed {args.seed}, D={DIM} float32, torch threads 1")
    print(f"machine: {machine_info()}")
    sections = []
    for max_len in args.max_lens:
        sections.append(f"## L = {max_len}  (fill/lost/changed: budget=L | hard = budget U[L/2, L])\n\n{results_table(results, max_len)}")
    mem = markdown_table(
        ["L", "method", "pack peak RSS (measured)", "tensors returned (analytic)"],
        [[p["max_len"], p["method"], "-" if p["peak_mib"] is None else f"{p['peak_mib']:.1f} MiB", f"{p['output_mib']:.1f} MiB"] for p in peaks],
    )
    sections.append(f"## Materialisation memory ({PACK_ROWS} rows per pack call)\n\n{mem}")
    targets = evaluate_targets(results, args.max_lens)
    sections.append("## Targets\n\n" + markdown_table(["target", "measured", "result"], targets))
    report = "\n\n".join(sections)
    print(report)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "packing",
        "config": {"samples": n, "seed": args.seed, "quick": args.quick, "max_lens": args.max_lens, "repeats": repeats,
                   "patch": PATCH, "dim": DIM, "pad_batch": PAD_BATCH, "pack_rows": PACK_ROWS, "max_shrink": MAX_SHRINK},
        "machine": machine_info(),
        "distribution": describe(sizes),
        "results": results,
        "peak_memory": peaks,
        "targets": [{"target": t, "measured": m, "result": r} for t, m, r in targets],
        "seconds": time.perf_counter() - t_start,
    }  # fmt: skip
    write_json(args.out / "packing.json", payload)
    (args.out / "packing.md").write_text(report + "\n")
    png = plot(results, args.max_lens, args.out / "packing.png")
    print(f"\nwrote {args.out / 'packing.json'}, {args.out / 'packing.md'}" + (f", {png}" if png else "") + f" in {payload['seconds']:.1f} s")
    return payload


if __name__ == "__main__":
    main()
