"""Smoke run of benchmarks/decode_memory.py at toy sizes: every path reports a peak and a time."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_memory.py"


def test_decode_memory_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_decode_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.main(["--seconds", "1", "2", "--size", "32x48", "--paths", "probe_video", "full decode",
                 "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "decode_memory.json").read_text())
    rows = payload["results"]
    assert [(r["clip_s"], r["path"]) for r in rows] == [(1, "probe_video"), (1, "full decode"),
                                                        (2, "probe_video"), (2, "full decode")]
    assert all(r["peak_mib"] >= 0 and r["decode_s"] >= 0 for r in rows)
    assert rows[0]["result"] == "(24, 32, 48)" and rows[3]["result"] == "(48, 32, 48, 3)"
    assert "longest / shortest" in (tmp_path / "decode_memory.md").read_text()
