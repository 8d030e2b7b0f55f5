"""Small helpers shared by the benchmark scripts: timing, machine info, tables, JSON, PNG.

Benchmarks are scripts, not tests: each prints a markdown table, writes JSON (and a
PNG when matplotlib is installed) and reports ratios against baselines measured in
the same run, so that numbers from different machines are never compared directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def best_time(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time in seconds of `fn()` over `repeats` runs (perf_counter).

    The minimum, not the mean: noise from other processes only ever adds time.
    """
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_times_interleaved(fns: Sequence[Callable[[], object]], *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Best wall time of each fn, the calls taken in turn (a, b, a, b, ...).

    On a shared machine the load changes from second to second; interleaving exposes
    every fn to the same load, so that their ratio, not their absolute speed, is what
    a run can be trusted for.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(max(repeats, 1)):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def machine_info() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A github markdown table; floats keep the formatting the caller gave them as strings."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def write_results(out: Path, stem: str, payload: dict, report: str, png: str | None = None) -> None:
    """<stem>.json and <stem>.md in `out`, and one line saying what was written (png: made by the caller)."""
    write_json(out / f"{stem}.json", payload)
    (out / f"{stem}.md").write_text(report + "\n")
    extra = f", {png}" if png else ""
    print(f"\nwrote {out / stem}.json, {out / stem}.md{extra} in {payload['seconds']:.1f} s")


def base_parser(doc: str, *, quick_help: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --quick, --out (default bench_results/), --seed."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    return p


def save_figure(fig, path: Path) -> Path:
    """tight_layout, write the PNG, close the figure (a script may draw several)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def try_pyplot():
    """matplotlib.pyplot with a non-interactive backend, or None (with a printed note)."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed; skipping the PNG (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_child_json(code: str, payload: dict, *, env: dict | None = None, timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter with `payload` as JSON on stdin; parse its last stdout line.

    A fresh process is how peak memory (ru_maxrss) of one step can be measured
    without the high-water mark of everything the parent did before.
    """
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child benchmark process failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
