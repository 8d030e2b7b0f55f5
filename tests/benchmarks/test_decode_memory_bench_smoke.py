"""Smoke run of benchmarks/decode_memory.py at toy sizes: every path reports a peak and a time."""

import importlib
import json


def test_decode_memory_benchmark_smoke(tmp_path):
    module = importlib.import_module("patchpack.benchmarks.decode_memory")
    module.main(["--seconds", "1", "2", "--size", "32x48", "--paths", "probe_video", "full decode",
                 "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "decode_memory.json").read_text())
    rows = payload["results"]
    assert [(r["clip_s"], r["path"]) for r in rows] == [(1, "probe_video"), (1, "full decode"),
                                                        (2, "probe_video"), (2, "full decode")]
    assert all(r["peak_mib"] >= 0 and r["decode_s"] >= 0 for r in rows)
    assert rows[0]["result"] == "(24, 32, 48)" and rows[3]["result"] == "(48, 32, 48, 3)"
    assert "longest / shortest" in (tmp_path / "decode_memory.md").read_text()
