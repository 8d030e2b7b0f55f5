"""Smoke run of benchmarks/packing.py at toy sizes: every method and regime reports, numbers are sane."""

import importlib
import json


def test_packing_benchmark_smoke(tmp_path):
    packing = importlib.import_module("patchpack.benchmarks.packing")
    packing.main(["--samples", "60", "--max-lens", "512", "--repeats", "1", "--seed", "3", "--out", str(tmp_path)])

    payload = json.loads((tmp_path / "packing.json").read_text())
    report = (tmp_path / "packing.md").read_text()
    assert "## L = 512: fill" in report and "NaViT random resolution" in report
    names = [name for name, _ in packing.METHODS]
    bounds = {(b["max_len"], b["regime"]): b["fill"] for b in payload["l2_bounds"]}
    for regime in packing.REGIMES:
        rows = {r["method"]: r for r in payload["results"] if r["max_len"] == 512 and r["regime"] == regime}
        assert sorted(rows) == sorted(names)
        for r in rows.values():
            assert 0.0 <= r["given_up"] <= 1.0 and 0.0 <= r["shrunk"] <= 1.0 and 0.0 <= r["fill"] <= 1.0, (regime, r["method"])
            assert r["plan_samples_per_s"] > 0
            if regime == "L":
                assert r["pack_gbps"] > 0 and r["memcpy_gbps"] > 0
        assert rows["sized buf=256"]["fill"] > 0.5  # (buckets may lose every sample at toy sizes)
        # whole-sample packers place every token they are given, and none beats the L2 bound
        for name in ("pad-to-max B=8", "next_fit", "ffd (offline)", "bfd buf=16"):
            assert rows[name]["given_up"] == 0.0 and rows[name]["shrunk"] == 0.0
            if name != "pad-to-max B=8":
                assert rows[name]["fill"] <= bounds[(512, regime)] + 1e-9
        assert rows["fill buf=256"]["given_up"] <= packing.MAX_SHRINK + 1e-9
    ks = payload["resolution_sampling"]
    assert 0 <= ks["plan"]["ks_chosen"] <= 1 and ks["fit"]["ks_chosen"] == ks["fit"]["ks_drawn"]
    assert len(payload["targets"]) > 0 and all(t["result"] in ("PASS", "FAIL") for t in payload["targets"])
    assert all(p["output_mib"] > 0 for p in payload["peak_memory"])
