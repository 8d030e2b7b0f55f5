"""Data pipeline throughput: shard read + decode + budget/patchify + pack, per DataLoader worker count.

    python benchmarks/pipeline.py [--quick] [--out DIR] [--samples N]

Writes the synthetic dataset (`patchpack synth`: videos up to 48 frames at 64-256 px,
images, 9:16 ... 21:9) to a temporary folder, then streams one epoch through
`PackedStream` with 0, 1 and 2 workers and reports samples/s, tokens/s (real tokens
packed), batches and the fill of the [rows, max_len] slots. Worker counts are
compared with each other in the same run; 0 workers runs everything in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from patchpack.benchmarks.common import base_parser, machine_info, markdown_table, write_json
from patchpack.packer import PackerConfig
from patchpack.train.data.config import DataConfig
from patchpack.train.data.packed_stream import PackedStream
from patchpack.train.data.synth import synth


def run(shards: Path, *, workers: int, data: DataConfig, packer: PackerConfig) -> dict:
    ds = PackedStream(data, packer)
    t0 = time.perf_counter()
    first = None
    samples = tokens = batches = 0
    for batch in ds.loader(num_workers=workers):
        first = first if first is not None else time.perf_counter() - t0
        samples += batch.num_samples
        tokens += int(batch.num_tokens.sum())
        batches += 1
    dt = time.perf_counter() - t0
    slots = batches * packer.rows * packer.max_len
    return {"workers": workers, "seconds": dt, "first_batch_s": first, "samples": samples, "tokens": tokens,
            "batches": batches, "samples_per_s": samples / dt, "tokens_per_s": tokens / dt,
            "fill": tokens / max(slots, 1), "skips": ds.skips}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__, quick_help="fewer samples (< 60 s on 2 cores)")
    p.add_argument("--samples", type=int, default=None, help="synthetic samples (default 96 quick, 400 full)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    n = args.samples or (96 if args.quick else 400)
    torch.set_num_threads(1)  # the workers are the parallelism; intra-op threads would fight them
    packer = PackerConfig(patch=(1, 2, 2), max_len=args.max_len, rows=args.rows,
                          max_tokens_per_sample=args.max_len // 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        made = synth(tmp, num_samples=n, seed=args.seed, shard_size=max(n // 8, 1), progress=False)
        synth_s = time.perf_counter() - t0
        data = DataConfig(shards=[tmp], epochs=1, seed=args.seed, shuffle_buffer=32, fps=8.0, max_frames=48)
        results = [run(Path(tmp), workers=w, data=data, packer=packer) for w in args.workers]

    base = results[0]["samples_per_s"]
    table = markdown_table(
        ["workers", "samples/s", "tokens/s", "vs first row", "batches", "fill", "first batch (s)", "skips"],
        [[r["workers"], f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['samples_per_s'] / base:.2f}x",
          r["batches"], f"{100 * r['fill']:.1f}%", f"{r['first_batch_s']:.2f}", sum(r["skips"].values())]
         for r in results])
    print(f"# pipeline benchmark: {made['written']} synthetic samples in {len(made['shards'])} shards "
          f"({made['bytes'] / 2**20:.1f} MiB, written in {synth_s:.1f} s); patch (1,2,2), L={args.max_len}, "
          f"rows={args.rows}, budget L/2, fps 8, torch threads 1")
    print(f"machine: {machine_info()}\n")
    print(table)
    payload = {"benchmark": "pipeline", "machine": machine_info(), "samples": made["written"],
               "shards": len(made["shards"]), "synth_seconds": synth_s, "max_len": args.max_len,
               "rows": args.rows, "results": results}
    path = write_json(args.out / "pipeline.json", payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
