"""kill -9 in the middle of a checkpoint write, then resume: nothing half-written is ever
visible, and the resumed run repeats the uninterrupted run's losses and weights bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from patchpack.train.data.synth import synth
from patchpack.train.loops import dit_loop as trainer
from patchpack.train.loops.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.metrics import read_metrics
from patchpack.train.options import load_config

# The child trains with these overrides and stalls for a minute half-way through writing
# the step-4 checkpoint (model.safetensors written, state not yet), so the kill is sure to
# land mid-write rather than wherever the scheduler happens to put it.
_CHILD = r"""
import json, sys, time
from pathlib import Path
import patchpack.train.loops.checkpoint as ck
from patchpack.train.options import load_config
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.dit_loop import train

overrides, marker = json.loads(sys.argv[1]), Path(sys.argv[2])
real = ck._write_file

def stalling(path, write):
    real(path, write)
    if path.parent.name.startswith("step_00000004.tmp-") and path.name == "model.safetensors":
        marker.write_text("writing")
        time.sleep(60)

ck._write_file = stalling
train(load_config(TrainConfig, None, overrides))
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    synth(out, num_samples=12, seed=0, shard_size=4, max_side=64, min_side=32, progress=False)
    return str(out)


def _overrides(shards, run_dir) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.max_frames=4", "data.shuffle_buffer=4",
        "packer.max_len=128", "packer.rows=2", "packer.max_tokens_per_sample=64", "packer.max_frames=2",
        "packer.buffer=4", "model.depth=1", "model.hidden=64", "model.heads=2", "model.attn_backend=reference",
        "optim.warmup=2", "loop.log_every=1", "loop.threads=1", "loop.caption_dropout=0.5",
        "loop.steps=6", "loop.ckpt_every=2", "loop.keep=10", "loop.num_workers=0",
    ]


def _runs(run_dir) -> list[dict[int, float]]:
    """metrics.jsonl split into one {step: loss} per process that appended to it."""
    runs: list[dict[int, float]] = []
    last = None
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if "loss" not in r:
            continue
        if last is None or r["step"] <= last:
            runs.append({})
        runs[-1][r["step"]] = r["loss"]
        last = r["step"]
    return runs


def _complete(path) -> bool:
    names = {p.name for p in path.iterdir()}
    return {"model.safetensors", "state.safetensors", "state.json"} <= names


def test_kill_9_mid_checkpoint_write_then_resume_matches_uninterrupted_run(shards, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    trainer.train(load_config(TrainConfig, None, _overrides(shards, ref_dir)))
    ref = _runs(ref_dir)[0]
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    marker, ckpts = tmp_path / "writing", run_dir / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(_overrides(shards, run_dir)), str(marker)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = set()
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached the step-4 checkpoint"
            latest = latest_checkpoint(ckpts)
            if latest is not None:  # whatever a reader sees is whole and loadable
                assert _complete(latest)
                step, model_state, state = load_checkpoint(latest)
                assert latest.name == f"step_{step:08d}" and model_state and "optimizer" in state
                seen.add(step)
            time.sleep(0.05)
        # the child is now stalled mid-write: the partial checkpoint must be invisible
        partial = [p for p in ckpts.iterdir() if p.name.startswith("step_00000004.tmp-")]
        assert len(partial) == 1 and not _complete(partial[0])
        assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000002"]
        assert latest_checkpoint(ckpts).name == "step_00000002"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert seen <= {2}
    killed = _runs(run_dir)
    assert len(killed) == 1 and sorted(killed[0]) == [1, 2, 3, 4]  # it trained past the checkpoint

    summary = trainer.train(load_config(TrainConfig, None, _overrides(shards, run_dir)))
    assert summary["start_step"] == 2 and summary["step"] == 6
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]  # the next save swept the leftover
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000002", "step_00000004", "step_00000006"]

    first, resumed = _runs(run_dir)
    assert sorted(resumed) == [3, 4, 5, 6]
    assert all(first[s] == ref[s] for s in first)  # bitwise: floats compared with ==
    assert all(resumed[s] == ref[s] for s in resumed)
    wa = load_file(str(latest_checkpoint(ref_dir / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(ckpts) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
