"""Smoke run of benchmarks/e2e.py at its --quick size: every batching trains and reports sane numbers.

The --budget regime (rows longer than the largest sample) is checked on hand-made clips, without
synthesis or training: each batching's step layout, equal slots and the attention-pair count.
"""

import importlib
import json
import math

import pytest
import torch


def test_e2e_benchmark_quick(tmp_path):
    e2e = importlib.import_module("patchpack.benchmarks.e2e")
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
    assert got["packed (sized)"]["fill"] > got["pad-to-max"]["fill"]
    assert got["packed (bfd)"]["lost"] == got["pad-to-max"]["lost"] == got["next_fit"]["lost"] == 0
    assert got["buckets"]["lost"] > 0
    assert [t["result"] for t in payload["targets"]] and all(t["result"] in ("PASS", "FAIL") for t in payload["targets"])
    assert (tmp_path / "e2e.md").read_text().count("packed (sized)") >= 1
    assert (tmp_path / "e2e.png").stat().st_size > 0


def _fake_clip(e2e, n: int, *, grid: tuple[int, int, int]):
    sample = e2e.PatchedSample(torch.ones(n, 4), torch.zeros(n, 3, dtype=torch.long), grid, meta={"caption": "x"})
    return e2e.Clip(sample, sample)


def test_e2e_budget_below_row_length():
    e2e = importlib.import_module("patchpack.benchmarks.e2e")
    max_len, budget, rows = 512, 256, 2
    lengths = [256, 256, 100, 200, 256, 64, 256, 150, 256, 256, 30, 256]
    clips = [_fake_clip(e2e, n, grid=(1, 1, n)) for n in lengths]
    # fake clips carry no frames, so sized packing (which plans from native sizes) sits out
    formers = {name: e2e.RowFormer(name, max_len, budget=budget) for name in e2e.BATCHINGS if name != e2e.PACKED}
    for i, clip in enumerate(clips):
        for f in formers.values():
            f.add(i, clip)
    batch, source = e2e.step_batch(clips, formers["pad-to-max"], 0, rows)
    assert batch.shape == (rows * max_len // budget, budget)  # one sample padded to the budget a row
    assert source == int(batch.num_tokens.sum()) == 256 + 256 + 100 + 200
    # each sample and each padding run is a segment: pairs = sum n^2 + sum (budget - n)^2
    assert e2e.attention_pairs(batch) == (2 * 256**2 + 100**2 + 200**2, 156**2 + 56**2)
    batch, _ = e2e.step_batch(clips, formers["packed (bfd)"], 0, rows)
    assert batch.shape == (rows, max_len) and batch.num_samples >= 4  # two full-budget clips share a row
    assert sum(e2e.attention_pairs(batch)) <= max_len**2 * rows


@pytest.mark.parametrize("budget", ["768", "384"])
def test_e2e_rejects_budget_not_dividing_the_step(budget, tmp_path):
    e2e = importlib.import_module("patchpack.benchmarks.e2e")
    with pytest.raises(ValueError, match=f"budget={budget}"):
        e2e.main(["--quick", "--budget", budget, "--out", str(tmp_path)])  # L=512, 2 rows: 768 > L, 384 no divisor
