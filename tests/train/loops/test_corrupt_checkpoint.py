"""Corrupt checkpoints (issue 15, item 4): every bad byte is caught with the file named; resume
falls back to the newest checkpoint that loads; generate names the bad file."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from patchpack.train.loops.checkpoint import (
    CorruptCheckpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from patchpack.train.loops.run_state import load_resume


def _save(root, steps=(1, 2, 3)):
    for s in steps:
        save_checkpoint(root, s, model_state={"w": torch.full((64,), float(s))},
                        state={"config": "", "optimizer": {}, "scheduler": {}, "ranks": [{"data": {}, "rng": {}}],
                               "x": torch.arange(8) * s}, keep=10)
    return list_checkpoints(root)


def _flip(path, offset=-5):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_model", "flip_state", "truncate", "delete", "bad_json", "extra_file"])
def test_every_kind_of_damage_names_the_file(tmp_path, damage):
    newest = _save(tmp_path)[-1]
    step, weights, _ = load_checkpoint(newest)  # intact: loads
    assert step == 3 and torch.equal(weights["w"], torch.full((64,), 3.0))
    if damage == "flip_model":  # a flipped bit inside the tensor bytes: only a checksum sees it
        _flip(newest / "model.safetensors")
        want = "model.safetensors does not match the sha256"
    elif damage == "flip_state":
        _flip(newest / "state.safetensors")
        want = "state.safetensors does not match the sha256"
    elif damage == "truncate":
        p = newest / "model.safetensors"
        p.write_bytes(p.read_bytes()[:100])
        want = "model.safetensors does not match the size"
    elif damage == "delete":
        (newest / "state.safetensors").unlink()
        want = "state.safetensors is missing"
    elif damage == "bad_json":
        (newest / "state.json").write_text('{"step": 3, "sta')
        want = "state.json is unreadable"
    else:  # a file written by the save, then replaced by other content of the same size
        p = newest / "model.safetensors"
        p.write_bytes(bytes(len(p.read_bytes())))
        want = "model.safetensors does not match the sha256"
    with pytest.raises(CorruptCheckpoint, match=want):
        load_checkpoint(newest)


def test_checkpoint_without_checksums_still_loads_and_a_bad_one_is_named(tmp_path):
    newest = _save(tmp_path, steps=(1,))[-1]
    meta = json.loads((newest / "state.json").read_text())
    del meta["files"]  # as written before checksums existed
    (newest / "state.json").write_text(json.dumps(meta))
    assert verify_checkpoint(newest)["step"] == 1 and load_checkpoint(newest)[0] == 1
    (newest / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CorruptCheckpoint, match="model.safetensors does not load"):
        load_checkpoint(newest)


def test_resume_falls_back_to_the_newest_that_loads_with_a_warning(tmp_path, caplog):
    ckpts = _save(tmp_path)
    _flip(ckpts[-1] / "model.safetensors")
    _flip(ckpts[-2] / "state.safetensors")
    with caplog.at_level(logging.WARNING, logger="patchpack.train.loops"):
        state = load_resume("auto", tmp_path)
    assert state.step == 1 and state.path == ckpts[0]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "step_00000003" in warned and "step_00000002" in warned and "resuming from" in warned

    _flip(ckpts[0] / "model.safetensors")
    with pytest.raises(CorruptCheckpoint, match="no checkpoint in .* loads.*loop.resume=none"):
        load_resume("auto", tmp_path)
    with pytest.raises(CorruptCheckpoint, match="step_00000002"):  # an explicit path never falls back
        load_resume(str(ckpts[1]), tmp_path)
    assert load_resume("none", tmp_path) is None
    assert load_resume("auto", tmp_path / "empty") is None


def test_a_training_run_resumes_past_a_corrupt_newest_checkpoint(tmp_path):
    from patchpack.train.data.synth import synth
    from patchpack.train.loops.config import TrainConfig
    from patchpack.train.loops.dit_loop import train
    from patchpack.train.options import load_config

    synth(tmp_path / "d", num_samples=6, shard_size=3, max_side=48, min_side=32, progress=False)
    cfg = lambda steps: load_config(TrainConfig, None, [  # noqa: E731
        f"run_dir={tmp_path / 'run'}", f"data.shards=[{tmp_path / 'd'}]", "data.max_frames=2",
        "packer.max_len=64", "packer.max_tokens_per_sample=32", "packer.max_frames=2", "packer.buffer=2",
        "model.depth=1", "model.hidden=32", "model.heads=2", "model.attn_backend=reference",
        "loop.progress=false", "loop.threads=1", "loop.device=cpu", "loop.ckpt_every=2", f"loop.steps={steps}"])
    assert train(cfg(4))["step"] == 4
    _flip(tmp_path / "run" / "checkpoints" / "step_00000004" / "model.safetensors")
    again = train(cfg(5))
    assert again["start_step"] == 2 and again["step"] == 5  # from the newest intact one, to the target


def test_generate_names_the_bad_file_and_the_newest_intact_one(tmp_path):
    from patchpack.train.apps.generate import load_run

    ckpts = _save(tmp_path / "checkpoints")
    _flip(ckpts[-1] / "model.safetensors")
    with pytest.raises(CorruptCheckpoint) as e:
        load_run(tmp_path)
    msg = str(e.value)
    assert "step_00000003/model.safetensors" in msg and f"--ckpt {ckpts[-2]}" in msg and "\n" not in msg
