"""Varlen attention benchmark: packed-row attention per backend against per-segment, dense-mask and padded SDPA.

    python benchmarks/attention.py [--quick] [--out DIR] [--threads N] [--max-lens 4096 16384]

Inputs: one representative packed row per max_len L. The size mix of
benchmarks/distributions.py goes through `fit_budget` (patch (1, 2, 2), per-sample
budget L * --budget-frac, default L/4: with a budget of L, ~85% of rows hold one
sample and attention over them is a single dense SDPA) and `plan_packs(..., "bfd",
buffer=64)`; the row taken has the most common segment count and the median fill
among those. The padding at its end is a segment of its own, as `pack` lays it out.
fp32, 8 heads, head dim 64, non-causal self-attention.

Methods, side by side in one run:
    varlen <b>     `varlen_attention(..., backend=b)` over the whole row, for each backend
                   that can run here; the others are listed with the reason `explain` gives
    ideal          the sum over segments (padding included: every kernel computes it) of one
                   SDPA call on that segment alone, [1, H, n, d], each timed separately
    dense mask     one SDPA call over the whole row with a block-diagonal bool [L, L] mask
    pad-to-max     the row's samples (not its padding) padded to the longest and batched,
                   [B, H, n_max, d], with a key-padding mask

Metrics:
    ms         best of `repeats` wall time after one warm-up call (timed once when the warm-up takes > 1 s)
    GFLOP/s    useful work only: 4 * n_q * n_k * d * H flops per sample segment forward (two
               matmuls, 2 flops a multiply-add; padding excluded), x3.5 for forward+backward
               (backward = 2.5x forward, the flash-attention convention)
    % peak     that over the fp32 GFLOP/s of a 2048^3 torch.mm timed in the same run
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from patchpack.benchmarks.common import (
    base_parser,
    best_time,
    machine_info,
    markdown_table,
    pass_fail,
    save_figure,
    try_pyplot,
    write_results,
)
from patchpack.benchmarks.distributions import MixConfig, sample_native_sizes, to_latent
from patchpack.kernels import explain, varlen_attention
from patchpack.packer import fit_budget, plan_packs

HEADS, HEAD_DIM = 8, 64
PATCH = (1, 2, 2)
TOKENS_PER_FRAME = 128  # as benchmarks/packing.py: max_frames = budget / 128
BACKENDS = ("cpu", "reference", "flex", "triton")
SLOW_S = 1.0  # after a warm-up slower than this, time one call only (keeps --quick under a minute)
SLOW_CAP_S = 30.0  # skip a method whose fwd, extrapolated as L^2 from the previous L, would take longer
MEMORY_CAP = 4 * 2**30  # skip an SDPA baseline whose math-path estimate exceeds this
FWD_BWD_FACTOR = 3.5
TARGETS = {"cpu_vs_ideal": 1.15, "cpu_vs_dense": 3.0}


# ---------------------------------------------------------------------------
# Inputs: one representative packed row
# ---------------------------------------------------------------------------
def representative_row(max_len: int, *, samples: int, seed: int, budget_frac: float) -> tuple[list[int], int]:
    """(segment lengths of one packed row, padding tokens at its end)."""
    budget = max(int(max_len * budget_frac), 1)
    lengths = []
    for f, h, w in (to_latent(s) for s in sample_native_sizes(samples, seed=seed, config=MixConfig())):
        t, hh, ww = fit_budget(f, h, w, patch=PATCH, max_tokens=budget, max_frames=max(budget // TOKENS_PER_FRAME, 1))
        lengths.append((t // PATCH[0]) * (hh // PATCH[1]) * (ww // PATCH[2]))
    rows = plan_packs(lengths, max_len, "bfd", buffer=64)
    common = Counter(len(r) for r in rows).most_common(1)[0][0]
    candidates = sorted((sum(lengths[i] for i in r), r) for r in rows if len(r) == common)
    used, row = candidates[len(candidates) // 2]
    return [lengths[i] for i in row], max_len - used


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------
def measure(fn: Callable[[], object], *, repeats: int) -> float:
    """Seconds of fn() after one untimed warm-up call (allocator, flex_attention's compile).

    When the warm-up took longer than SLOW_S a single timed call is the measurement.
    """
    t0 = time.perf_counter()
    fn()
    if time.perf_counter() - t0 > SLOW_S:
        repeats = 1
    return best_time(fn, repeats=repeats, warmup=0)


def timed_pair(
    forward: Callable[..., torch.Tensor], leaves: list[torch.Tensor], *, repeats: int, backward: bool
) -> dict:
    """Forward (no_grad, on detached inputs) and forward+backward (random dout) seconds of forward(*leaves)."""
    detached = [t.detach() for t in leaves]

    def fwd():
        with torch.no_grad():
            forward(*detached)

    out = {"fwd_s": measure(fwd, repeats=repeats)}
    if backward:
        dout = torch.randn_like(forward(*detached))

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            forward(*leaves).backward(dout)

        out["fwd_bwd_s"] = measure(fwd_bwd, repeats=repeats)
    return out


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().contiguous().requires_grad_(True)


def heads_first(x_TNH: torch.Tensor) -> torch.Tensor:
    """(n, H, d) -> (1, H, n, d) for SDPA."""
    return x_TNH.transpose(0, 1).unsqueeze(0)


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def refusal(q, k, v, *, needs_grad: bool, backend: str) -> str | None:
    """Why `backend` cannot run these inputs (the reasons `explain` prints), or None."""
    text = explain(q, k, v, needs_grad=needs_grad, backend=backend)
    if text.startswith("chosen: " + backend):
        return None
    return "; ".join(line.strip() for line in text.splitlines()[1:])


def bench_varlen(backend: str, q, k, v, segs: list[int], *, repeats: int) -> dict:
    fwd_reason = refusal(q, k, v, needs_grad=False, backend=backend)
    if fwd_reason is not None:
        return {"skipped_fwd": fwd_reason, "skipped_fwd_bwd": fwd_reason}
    bwd_reason = refusal(q, k, v, needs_grad=True, backend=backend)
    backward = bwd_reason is None
    cu = torch.tensor([0, *torch.tensor(segs).cumsum(0).tolist()], dtype=torch.int32)
    n_max = max(segs)
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    row = timed_pair(lambda a, b, c: varlen_attention(a, b, c, cu, cu, n_max, n_max, backend=backend), [ql, kl, vl], repeats=repeats, backward=backward)
    if not backward:
        row["skipped_fwd_bwd"] = bwd_reason
    return row


def bench_ideal(q, k, v, segs: list[int], *, repeats: int) -> dict:
    total = {"fwd_s": 0.0, "fwd_bwd_s": 0.0}
    start = 0
    for n in segs:
        if n == 0:
            continue
        qs, ks, vs = (leaf(heads_first(x[start : start + n])) for x in (q, k, v))
        part = timed_pair(F.scaled_dot_product_attention, [qs, ks, vs], repeats=repeats, backward=True)
        total["fwd_s"] += part["fwd_s"]
        total["fwd_bwd_s"] += part["fwd_bwd_s"]
        start += n
    return total


def sdpa_bytes(batch: int, n: int) -> int:
    """Math-path estimate for fwd+bwd: scores, probabilities and their gradient, [B, H, n, n] fp32, plus the bool mask."""
    return 3 * batch * HEADS * n * n * 4 + batch * n * n


def bench_dense(q, k, v, segs: list[int], *, repeats: int) -> dict:
    L = q.shape[0]
    if sdpa_bytes(1, L) > MEMORY_CAP:
        reason = f"math-path estimate {sdpa_bytes(1, L) / 2**30:.1f} GiB > {MEMORY_CAP / 2**30:.0f} GiB ([H, L, L] fp32 scores, probs, grads at L={L})"
        return {"skipped_fwd": reason, "skipped_fwd_bwd": reason}
    ids = torch.repeat_interleave(torch.arange(len(segs)), torch.tensor(segs))
    mask_LL = ids[:, None] == ids[None, :]
    q4, k4, v4 = (leaf(heads_first(x)) for x in (q, k, v))
    return timed_pair(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask_LL), [q4, k4, v4], repeats=repeats, backward=True)


def bench_pad(q, k, v, samples: list[int], *, repeats: int) -> dict:
    B, n_max = len(samples), max(samples)
    if sdpa_bytes(B, n_max) > MEMORY_CAP:
        reason = f"math-path estimate {sdpa_bytes(B, n_max) / 2**30:.1f} GiB > {MEMORY_CAP / 2**30:.0f} GiB"
        return {"skipped_fwd": reason, "skipped_fwd_bwd": reason}
    padded = []
    for x in (q, k, v):
        xb = x.new_zeros(B, HEADS, n_max, HEAD_DIM)
        start = 0
        for b, n in enumerate(samples):
            xb[b, :, :n] = x[start : start + n].transpose(0, 1)
            start += n
        padded.append(leaf(xb))
    key_valid = (torch.arange(n_max)[None, :] < torch.tensor(samples)[:, None])[:, None, None, :]  # [B, 1, 1, n_max]
    return timed_pair(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=key_valid), padded, repeats=repeats, backward=True)


def matmul_peak_gflops(*, repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), repeats=max(repeats, 3)) / 1e9


# ---------------------------------------------------------------------------
# One max_len
# ---------------------------------------------------------------------------
def too_slow(name: str, max_len: int, earlier: list[dict]) -> str | None:
    """A reason to skip `name` at max_len when its fwd at a smaller L, scaled by L^2, exceeds SLOW_CAP_S."""
    for r in earlier:
        if r["method"] == name and "fwd_ms" in r and r["max_len"] < max_len:
            guess = r["fwd_ms"] / 1e3 * (max_len / r["max_len"]) ** 2
            if guess > SLOW_CAP_S:
                return f"fwd took {r['fwd_ms'] / 1e3:.1f} s at L={r['max_len']}; ~{guess:.0f} s expected at L={max_len} (> {SLOW_CAP_S:.0f} s cap)"
    return None


def run_length(
    max_len: int, *, samples: int, seed: int, budget_frac: float, repeats: int, earlier: list[dict]
) -> tuple[dict, list[dict]]:
    sample_lens, pad = representative_row(max_len, samples=samples, seed=seed, budget_frac=budget_frac)
    segs = sample_lens + ([pad] if pad else [])
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(max_len, HEADS, HEAD_DIM, generator=g) for _ in range(3))
    useful = sum(4 * n * n * HEAD_DIM * HEADS for n in sample_lens)
    methods: list[tuple[str, Callable[[], dict]]] = [
        *[(f"varlen {b}", lambda b=b: bench_varlen(b, q, k, v, segs, repeats=repeats)) for b in BACKENDS],
        ("ideal (per-segment SDPA)", lambda: bench_ideal(q, k, v, segs, repeats=repeats)),
        ("dense mask SDPA", lambda: bench_dense(q, k, v, segs, repeats=repeats)),
        ("pad-to-max SDPA", lambda: bench_pad(q, k, v, sample_lens, repeats=repeats)),
    ]
    results = []
    for name, fn in methods:
        t0 = time.perf_counter()
        reason = too_slow(name, max_len, earlier)
        r = {"max_len": max_len, "method": name, **({"skipped_fwd": reason, "skipped_fwd_bwd": reason} if reason else fn())}
        r["wall_s"] = time.perf_counter() - t0
        for key, flops in (("fwd", useful), ("fwd_bwd", useful * FWD_BWD_FACTOR)):
            if f"{key}_s" in r:
                r[f"{key}_ms"] = 1e3 * r.pop(f"{key}_s")
                r[f"{key}_gflops"] = flops / (r[f"{key}_ms"] / 1e3) / 1e9
        results.append(r)
    row = {"max_len": max_len, "samples": sample_lens, "padding": pad, "useful_fwd_gflop": useful / 1e9}
    return row, results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _cells(r: dict, key: str, ideal: dict) -> list[str]:
    if f"{key}_ms" not in r:
        return ["skipped", "-", "-", "-"]
    ratio = r[f"{key}_ms"] / ideal[f"{key}_ms"] if f"{key}_ms" in ideal else float("nan")
    return [f"{r[f'{key}_ms']:.1f}", f"{r[f'{key}_gflops']:.1f}", f"{100 * r[f'{key}_peak_frac']:.0f}%", f"{ratio:.2f}x"]


def results_table(results: list[dict], max_len: int) -> str:
    rows_L = [r for r in results if r["max_len"] == max_len]
    ideal = next(r for r in rows_L if r["method"].startswith("ideal"))
    rows = [[r["method"], *_cells(r, "fwd", ideal), *_cells(r, "fwd_bwd", ideal)] for r in rows_L]
    headers = ["method", "fwd ms", "fwd GFLOP/s", "fwd % peak", "fwd x ideal", "fwd+bwd ms", "fwd+bwd GFLOP/s", "fwd+bwd % peak", "fwd+bwd x ideal"]
    skips = [f"- {r['method']}: {r.get('skipped_fwd') or r.get('skipped_fwd_bwd')}" for r in rows_L if "skipped_fwd_bwd" in r]
    return markdown_table(headers, rows) + ("\n\nskipped:\n" + "\n".join(skips) if skips else "")


def evaluate_targets(results: list[dict], max_lens: list[int]) -> list[list[str]]:
    get = {(r["max_len"], r["method"]): r for r in results}
    out = []
    for L in max_lens:
        cpu, ideal = get[(L, "varlen cpu")], get[(L, "ideal (per-segment SDPA)")]
        ratio = cpu["fwd_bwd_ms"] / ideal["fwd_bwd_ms"]
        out.append([f"cpu fwd+bwd <= {TARGETS['cpu_vs_ideal']}x ideal (L={L})", f"{ratio:.2f}x", pass_fail(ratio <= TARGETS["cpu_vs_ideal"])])
    if 4096 in max_lens:
        cpu, dense = get[(4096, "varlen cpu")], get[(4096, "dense mask SDPA")]
        for key, label in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
            if f"{key}_ms" in dense:
                speedup = dense[f"{key}_ms"] / cpu[f"{key}_ms"]
                out.append([f"cpu {label} >= {TARGETS['cpu_vs_dense']}x faster than dense mask (L=4096)", f"{speedup:.2f}x", pass_fail(speedup >= TARGETS["cpu_vs_dense"])])
    return out


def plot(results: list[dict], max_lens: list[int], path: Path) -> Path | None:
    plt = try_pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(max_lens), figsize=(6 * len(max_lens), 4), squeeze=False)
    for ax, L in zip(axes[0], max_lens, strict=True):
        rows = [r for r in results if r["max_len"] == L and "fwd_ms" in r]
        names = [r["method"] for r in rows]
        ys = range(len(rows))
        ax.barh([y - 0.2 for y in ys], [r["fwd_ms"] for r in rows], height=0.4, label="fwd")
        ax.barh([y + 0.2 for y in ys], [r.get("fwd_bwd_ms", 0.0) for r in rows], height=0.4, label="fwd+bwd")
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms (log)")
        ax.set_title(f"L={L}, fp32, H={HEADS}, d={HEAD_DIM}")
        ax.legend()
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__, quick_help="L=4096 only, best of 2 (< 60 s on 2 cores)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine may be shared)")
    p.add_argument("--max-lens", type=int, nargs="+", default=None, help="values of L (default 4096 quick, 4096 16384 full)")
    p.add_argument("--samples", type=int, default=2000, help="samples drawn before packing")
    p.add_argument("--budget-frac", type=float, default=0.25, help="per-sample token budget as a fraction of L")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (best of; default 2 quick, 3 full)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    max_lens = args.max_lens or ([4096] if args.quick else [4096, 16384])
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    peak = matmul_peak_gflops(repeats=repeats)
    rows, results = [], []
    for L in max_lens:
        row, res = run_length(L, samples=args.samples, seed=args.seed, budget_frac=args.budget_frac, repeats=repeats, earlier=results)
        rows.append(row)
        results += res
    peak = max(peak, matmul_peak_gflops(repeats=repeats))  # before and after: a shared machine only ever slows it
    for r in results:
        for key in ("fwd", "fwd_bwd"):
            if f"{key}_gflops" in r:
                r[f"{key}_peak_frac"] = r[f"{key}_gflops"] / peak

    print(f"# attention benchmark: fp32, H={HEADS}, d={HEAD_DIM}, non-causal, torch threads {args.threads}, best of {repeats}")
    print("note: the machine may be shared with other jobs; times are best-of-N and ratios are within this run")
    print(f"machine: {machine_info()}")
    print(f"fp32 matmul peak (2048^3 torch.mm, best before/after): {peak:.1f} GFLOP/s")
    sections = []
    for row in rows:
        L = row["max_len"]
        desc = f"samples {row['samples']} + padding {row['padding']}; useful fwd work {row['useful_fwd_gflop']:.2f} GFLOP"
        sections.append(f"## L = {L}: {desc}\n\n{results_table(results, L)}")
    targets = evaluate_targets(results, max_lens)
    sections.append("## Targets\n\n" + markdown_table(["target", "measured", "result"], targets))
    report = "\n\n".join(sections)
    print(report)

    payload = {
        "benchmark": "attention",
        "config": {"quick": args.quick, "max_lens": max_lens, "repeats": repeats, "threads": args.threads, "seed": args.seed,
                   "samples": args.samples, "budget_frac": args.budget_frac, "heads": HEADS, "head_dim": HEAD_DIM,
                   "dtype": "float32", "fwd_bwd_flop_factor": FWD_BWD_FACTOR},
        "machine": machine_info(),
        "matmul_peak_gflops": peak,
        "rows": rows,
        "results": results,
        "targets": [{"target": t, "measured": m, "result": r} for t, m, r in targets],
        "seconds": time.perf_counter() - t_start,
    }  # fmt: skip
    png = plot(results, max_lens, args.out / "attention.png")
    write_results(args.out, "attention", payload, report, png)
    return payload


if __name__ == "__main__":
    main()
