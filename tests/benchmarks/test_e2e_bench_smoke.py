"""Smoke run of benchmarks/e2e.py at its --quick size: every batching trains and reports sane numbers."""

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e.py"


def _load_e2e():
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_e2e_benchmark_quick(tmp_path):
    e2e = _load_e2e()
    e2e.main(["--quick", "--out", str(tmp_path)])  # 4 steps, evals at 0, 2, 4

    payload = json.loads((tmp_path / "e2e.json").read_text())
    got = {r["batching"]: r for r in payload["results"]}
    assert sorted(got) == sorted(e2e.BATCHINGS)
    slots = payload["config"]["slots_per_step"]
    for name, r in got.items():
        for key in ("useful_tokens_per_s", "us_per_useful_token", "fill", "final_eval_loss", "eval_loss_at_common_tokens"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["steps"] == 4 and r["slots"] == 4 * slots  # the same compute budget for every batching
        assert 0 < r["fill"] <= 1 and r["useful_tokens"] <= r["slots"]
        assert [e["step"] for e in r["eval"]] == [0, 2, 4]
        useful = [e["useful_tokens"] for e in r["eval"]]
        assert useful == sorted(useful) and useful[-1] == r["useful_tokens"]
    # same init, same held-out set at fixed t and noise: the step-0 eval loss is the same for all
    assert len({round(r["eval"][0]["loss"], 6) for r in got.values()}) == 1
    # several samples per row beat one padded sample per row; only buckets crop source tokens
    assert got["packed (bfd)"]["fill"] > got["pad-to-max"]["fill"]
    assert got["packed (bfd)"]["lost"] == got["pad-to-max"]["lost"] == got["next_fit"]["lost"] == 0
    assert got["buckets"]["lost"] > 0
    assert [t["result"] for t in payload["targets"]] and all(t["result"] in ("PASS", "FAIL") for t in payload["targets"])
    assert (tmp_path / "e2e.md").read_text().count("packed (bfd)") >= 1
    assert (tmp_path / "e2e.png").stat().st_size > 0
