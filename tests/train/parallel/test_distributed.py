"""Two CPU processes under torchrun (gloo): disjoint data per rank, identical weights at
the end, rank 0's checkpoint equal to them, and a 2-rank resume that continues bitwise."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from patchpack.train.data.packed_stream import split_shards
from patchpack.train.data.synth import synth
from patchpack.train.loops.checkpoint import latest_checkpoint, load_checkpoint
from patchpack.train.loops.metrics import read_metrics

# Each rank records the keys it trained on and its final trained weights (DiT + text).
_WORKER = r"""
import json, os, sys
from safetensors.torch import save_file
from patchpack.train.loops import dit_loop as trainer
from patchpack.train.options import load_config
from patchpack.train.loops.config import TrainConfig

import torch.distributed as dist

overrides, out = json.loads(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")  # ours: train() joins it and leaves it open for the gathers below
seen, objectives = [], []
real = trainer.FlowObjective.forward

def recording(self, batch, *args, **kw):
    seen.append(list(batch.keys))
    objectives.append(self)
    return real(self, batch, *args, **kw)

trainer.FlowObjective.forward = recording
summary = trainer.train(load_config(TrainConfig, None, overrides))
full = lambda v: v.full_tensor() if hasattr(v, "full_tensor") else v  # FSDP shards: a collective
weights = {k: full(v).detach().contiguous() for k, v in objectives[-1].trained.state_dict().items()}
save_file(weights, f"{out}/weights_{rank}.safetensors")
with open(f"{out}/rank_{rank}.json", "w") as f:
    json.dump({"batches": seen, "summary": summary}, f)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    synth(out, num_samples=12, seed=0, shard_size=2, max_side=64, min_side=32, progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(shards, run_dir, *extra) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.max_frames=4", "data.shuffle_buffer=2",
        "packer.max_len=128", "packer.rows=1", "packer.max_tokens_per_sample=64", "packer.max_frames=2",
        "packer.buffer=2", "model.depth=1", "model.hidden=64", "model.heads=2", "model.attn_backend=reference",
        "optim.warmup=2", "loop.log_every=1", "loop.threads=1", "loop.caption_dropout=0.5",
        "loop.progress=false", "loop.device=cpu", *extra,
    ]


def _torchrun_cmd(tmp_path: Path, out: Path, overrides: list[str]) -> list[str]:
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), json.dumps(overrides), str(out)]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(tmp_path: Path, name: str, overrides: list[str]) -> tuple[list[dict], list[dict]]:
    """Run 2 ranks; -> (per-rank records, per-rank final weights)."""
    out = tmp_path / name
    done = subprocess.run(_torchrun_cmd(tmp_path, out, overrides), env=_ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    weights = [load_file(str(out / f"weights_{r}.safetensors")) for r in (0, 1)]
    return records, weights


def _shard_keys(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {f"{path.stem}/{Path(m.name).name.split('.')[0]}" for m in tar.getmembers()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_OPTS = ("data.epochs=1", "loop.steps=50", "loop.ckpt_every=1", "loop.keep=100")


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory):
    """One 2-rank DDP run over one epoch, a checkpoint every step."""
    tmp = tmp_path_factory.mktemp("ddp")
    records, weights = _torchrun(tmp, "out_a", _overrides(shards, tmp / "a", *_OPTS))
    return tmp / "a", records, weights


def test_two_ranks_read_disjoint_data_end_identical_and_resume_bitwise(shards, ddp_run, tmp_path):
    a, records, weights = ddp_run
    b = tmp_path / "b"
    opts = _OPTS

    urls = sorted(str(p) for p in Path(shards).glob("*.tar"))
    assert len(urls) == 6
    mine = [set().union(*(_shard_keys(Path(u)) for u in split_shards(
        urls, epoch=0, seed=0, shuffle=True, rank=r, world_size=2, worker=0, num_workers=1))) for r in (0, 1)]
    seen = [[k for b in rec["batches"] for k in b] for rec in records]
    for r in (0, 1):
        assert len(seen[r]) == len(set(seen[r])) > 0  # no sample twice within a rank (one epoch)
        assert set(seen[r]) <= mine[r]  # each rank reads only its own shards
    assert not set(seen[0]) & set(seen[1])
    # the ranks stop together when the first runs dry; that one has trained on all of its samples
    assert any(set(seen[r]) == mine[r] for r in (0, 1))
    steps = {rec["summary"]["step"] for rec in records}
    assert len(steps) == 1
    last = steps.pop()
    assert last >= 2 and all(rec["summary"]["stopped"] == "data_exhausted" for rec in records)

    assert _same(weights[0], weights[1])  # DDP kept the replicas identical, bit for bit
    _, model_state, state = load_checkpoint(latest_checkpoint(a / "checkpoints"))
    assert _same({f"dit.{k}": v for k, v in model_state.items()},
                 {k: v for k, v in weights[0].items() if k.startswith("dit.")})
    assert all(torch.equal(state["text"][k], weights[0][f"text.{k}"]) for k in state["text"])
    assert state["world_size"] == 2 and len(state["ranks"]) == 2  # both ranks' data state
    rows = [r for r in read_metrics(a / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, last + 1))
    assert all(r["world_size"] == 2 and r["tokens_per_s"] > 0 for r in rows)

    # resume: b starts from a's step-1 checkpoint (both ranks' data and RNG states) and
    # must retrace a's remaining steps exactly
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "step_00000001", b / "checkpoints" / "step_00000001")
    resumed, wb = _torchrun(tmp_path, "out_b", _overrides(shards, b, *opts))
    assert all(r["summary"]["start_step"] == 1 and r["summary"]["step"] == last for r in resumed)
    assert [[k for bt in r["batches"] for k in bt] for r in resumed] == [s[len(records[i]["batches"][0]):]
                                                                       for i, s in enumerate(seen)]
    assert _same(weights[0], wb[0]) and _same(wb[0], wb[1])
    la = {r["step"]: r["loss"] for r in rows}
    lb = {r["step"]: r["loss"] for r in read_metrics(b / "metrics.jsonl") if "loss" in r}
    assert sorted(lb) == list(range(2, last + 1)) and all(la[s] == lb[s] for s in lb)  # bitwise


@pytest.mark.slow  # a third torchrun launch: ~25 s more on 2 loaded cores
def test_fsdp_resumes_a_ddp_checkpoint_and_tracks_the_ddp_run(shards, ddp_run, tmp_path):
    a, ddp_records, ddp_weights = ddp_run
    c = tmp_path / "c"
    (c / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "step_00000001", c / "checkpoints" / "step_00000001")
    recs, wc = _torchrun(tmp_path, "out_c", _overrides(shards, c, *_OPTS, "loop.parallel=fsdp"))
    last = ddp_records[0]["summary"]["step"]
    assert all(r["summary"]["start_step"] == 1 and r["summary"]["step"] == last for r in recs)
    # the same batches per rank as the DDP run after its step 1
    assert [r["batches"] for r in recs] == [r["batches"][1:] for r in ddp_records]
    assert _same(wc[0], wc[1])
    for k in ddp_weights[0]:  # reduce-scatter vs all-reduce: equal up to float rounding
        torch.testing.assert_close(wc[0][k], ddp_weights[0][k], rtol=1e-4, atol=1e-6, msg=k)
    la = {r["step"]: r["loss"] for r in read_metrics(a / "metrics.jsonl") if "loss" in r}
    lc = {r["step"]: r["loss"] for r in read_metrics(c / "metrics.jsonl") if "loss" in r}
    assert sorted(lc) == list(range(2, last + 1))
    assert all(abs(lc[s] - la[s]) <= 1e-4 * abs(la[s]) for s in lc)
    # the checkpoint FSDP wrote holds full tensors, in the same layout as DDP's
    _, ms_a, st_a = load_checkpoint(latest_checkpoint(a / "checkpoints"))
    _, ms_c, st_c = load_checkpoint(latest_checkpoint(c / "checkpoints"))
    assert {k: v.shape for k, v in ms_a.items()} == {k: v.shape for k, v in ms_c.items()}
    assert {k: v.shape for k, v in st_a["ema"].items()} == {k: v.shape for k, v in st_c["ema"].items()}
    assert st_a["optimizer"]["state"].keys() == st_c["optimizer"]["state"].keys()


@pytest.mark.slow  # one more torchrun launch
def test_sigterm_to_torchrun_stops_both_ranks_at_the_same_step_with_a_checkpoint(shards, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    cmd = _torchrun_cmd(tmp_path, out, _overrides(shards, run_dir, "loop.steps=500", "loop.ckpt_every=1000"))
    launcher = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not any(r.get("step", 0) >= 2 for r in _metrics_so_far(run_dir)):
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    summaries = [json.loads((out / f"rank_{r}.json").read_text())["summary"] for r in (0, 1)]
    assert [s["stopped"] for s in summaries] == ["sigterm", "sigterm"]
    assert summaries[0]["step"] == summaries[1]["step"] >= 2  # the ranks agreed on where to stop
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{summaries[0]['step']:08d}"


def _metrics_so_far(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
