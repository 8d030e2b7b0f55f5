"""Smoke run of benchmarks/attention.py on one tiny packed row: every method reports or says why not."""

import importlib
import json


def test_attention_benchmark_smoke(tmp_path):
    attention = importlib.import_module("patchpack.benchmarks.attention")
    attention.main(["--max-lens", "256", "--samples", "200", "--repeats", "1", "--out", str(tmp_path)])

    payload = json.loads((tmp_path / "attention.json").read_text())
    assert "## L = 256" in (tmp_path / "attention.md").read_text()
    (row,) = payload["rows"]
    assert sum(row["samples"]) + row["padding"] == 256 and len(row["samples"]) >= 2
    results = {r["method"]: r for r in payload["results"]}
    expected = {f"varlen {b}" for b in attention.BACKENDS} | {"ideal (per-segment SDPA)", "dense mask SDPA", "pad-to-max SDPA"}
    assert set(results) == expected
    for name, r in results.items():
        for key in ("fwd", "fwd_bwd"):
            if f"skipped_{key}" in r:
                assert r[f"skipped_{key}"] and f"{key}_ms" not in r, (name, key)
            else:
                assert r[f"{key}_ms"] > 0 and r[f"{key}_gflops"] > 0 and r[f"{key}_peak_frac"] > 0, (name, key, r)
    # what must run on any CPU: the cpu and reference backends and all three SDPA baselines, fwd and fwd+bwd
    for name in ("varlen cpu", "varlen reference", "ideal (per-segment SDPA)", "dense mask SDPA", "pad-to-max SDPA"):
        assert "fwd_bwd_ms" in results[name], name
    assert payload["matmul_peak_gflops"] > 0
    assert payload["targets"] and all(t["result"] in ("PASS", "FAIL") for t in payload["targets"])
