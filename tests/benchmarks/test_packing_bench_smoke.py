"""Smoke run of benchmarks/packing.py at toy sizes: every method reports, numbers are sane."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "packing.py"


def _load_packing():
    spec = importlib.util.spec_from_file_location("bench_packing", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_packing_benchmark_smoke(tmp_path):
    packing = _load_packing()
    packing.main(["--samples", "60", "--max-lens", "512", "--repeats", "1", "--seed", "3", "--out", str(tmp_path)])

    payload = json.loads((tmp_path / "packing.json").read_text())
    assert "## L = 512" in (tmp_path / "packing.md").read_text()
    names = [name for name, _ in packing.METHODS]
    for max_len in (512,):
        for regime in ("budget=L", "hard"):
            rows = {r["method"]: r for r in payload["results"] if r["max_len"] == max_len and r["regime"] == regime}
            assert sorted(rows) == sorted(names)
            for r in rows.values():
                for key in ("fill", "lost", "changed"):
                    assert 0.0 <= r[key] <= 1.0, (max_len, regime, r["method"], key, r[key])
                assert r["fill"] > 0.3 and r["plan_samples_per_s"] > 0
                if regime == "budget=L":
                    assert r["pack_gbps"] > 0 and r["memcpy_gbps"] > 0
            # whole-sample packers place every token they are given; so does pad-to-max
            for name in ("pad-to-max B=8", "next_fit", "ffd (offline)", "bfd buf=16"):
                assert rows[name]["lost"] == 0.0 and rows[name]["changed"] == 0.0
    # fill-to-exact never shrinks a sample by more than max_shrink, so never loses more tokens than that
    assert all(r["lost"] <= packing.MAX_SHRINK + 1e-9 for r in payload["results"] if r["method"].startswith("fill"))
    assert len(payload["targets"]) > 0 and all(t["result"] in ("PASS", "FAIL") for t in payload["targets"])
    assert all(p["output_mib"] > 0 for p in payload["peak_memory"])
