"""Sampling from a training run: checkpoint loading (EMA/raw), request checks, files, pack invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from run_testing import tiny_run

from patchpack.model import FlowConfig, generate, load_dit
from patchpack.train.apps.generate import (
    find_checkpoint,
    load_run,
    parse_size,
    requests,
    sample,
    write_outputs,
)
from patchpack.train.data import from_video_CTHW
from patchpack.train.data.synth import synth
from patchpack.train.loops import dit_loop as trainer
from patchpack.train.loops.config import TrainConfig
from patchpack.train.options import load_config

pytest.importorskip("av")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("gen"), "loop.ema_decay=0.5")[0]


def test_load_run_finds_the_newest_checkpoint_and_picks_ema_or_raw(run_dir):
    ckpt = find_checkpoint(run_dir)
    assert ckpt.name == "step_00000003" and find_checkpoint(ckpt) == ckpt
    ema, raw = load_run(run_dir), load_run(ckpt, weights="raw")
    assert ema.step == raw.step == 3 and ema.patch == (2, 4, 4) and ema.fps == 8.0
    diffs = [not torch.equal(a, b) for a, b in zip(ema.model.state_dict().values(), raw.model.state_dict().values())]
    assert any(diffs), "EMA weights (decay 0.5) should differ from the last step's"
    with pytest.raises(ValueError, match="weights="):
        load_run(run_dir, weights="best")


def test_missing_or_empty_checkpoint_paths_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        find_checkpoint(tmp_path)


def test_sizes_and_requests_are_checked():
    assert parse_size("96x160") == (96, 160)
    for bad in ("96", "96x", "ax3", "0x8"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    reqs = requests(["a", "b"], sizes=[(8, 8), (4, 12)], frames=[2])
    assert [(r.prompt, r.grid) for r in reqs] == [("a", (2, 8, 8)), ("a", (2, 4, 12)), ("b", (2, 8, 8)), ("b", (2, 4, 12))]
    with pytest.raises(ValueError, match="one per size"):
        requests(["a"], sizes=[(8, 8), (8, 8)], frames=[2, 2, 2])


def test_sample_rejects_sizes_off_the_patch(run_dir):
    run = load_run(run_dir)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        sample(run, requests(["a"], sizes=[(10, 8)], frames=[2]), steps=1)
    with pytest.raises(ValueError, match="T=3"):
        sample(run, requests(["a"], sizes=[(8, 8)], frames=[3]), steps=1)


def test_a_request_is_the_same_alone_or_packed_with_others(run_dir, tmp_path):
    run = load_run(run_dir)
    reqs = requests(["a red circle moving left fast on a black background", "a photo of a cat"],
                    sizes=[(16, 16), (8, 24)], frames=[4, 1])
    together = sample(run, reqs, steps=3, seed=7)
    assert [v.shape for v in together] == [(4, 16, 16, 3), (1, 8, 24, 3)] * 2
    alone = sample(run, reqs[:1], steps=3, seed=7)[0]
    assert np.abs(alone.astype(int) - together[0].astype(int)).max() <= 1  # uint8 rounding at most
    assert not np.array_equal(together[0], together[2])  # a different prompt and noise seed

    manifest = write_outputs(tmp_path, reqs, together, fps=run.fps, info={"seed": 7})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and on_disk["seed"] == 7 and len(on_disk["items"]) == 4
    first = on_disk["items"][0]
    assert first["frames"] == 4 and set(first["files"]) == {"png", "gif", "mp4"}
    assert "mp4" not in on_disk["items"][1]["files"]  # an image
    for item in on_disk["items"]:
        for f in item["files"].values():
            assert (tmp_path / f).is_file()
    assert (tmp_path / "contact_sheet.png").is_file() and (tmp_path / "index.html").is_file()


def test_ema_entries_the_model_lacks_are_refused(run_dir, tmp_path):
    from patchpack.train.loops.checkpoint import load_checkpoint, save_checkpoint

    step, model_state, state = load_checkpoint(find_checkpoint(run_dir))
    state["ema"]["dit.bogus.weight"] = torch.zeros(2)
    bad = save_checkpoint(tmp_path / "checkpoints", step, model_state=model_state, state=state)
    load_run(bad, weights="raw")  # the raw weights never read the EMA
    with pytest.raises(ValueError, match="bogus"):
        load_run(bad)


def test_a_non_default_run_config_reaches_sampling_intact(tmp_path_factory):
    """Flow, prediction, RoPE extrapolation and the trained grid travel from training to sampling."""
    run_path, summary = tiny_run(tmp_path_factory.mktemp("nondefault"), "model.prediction=x",
                                 "model.rope_extrapolation=ntk", "model.mlp_ratio=2.0", "flow.logit_mean=0.7",
                                 "flow.shift_base_tokens=16", "loop.steps=2", samples=4, seed=1)
    flow = FlowConfig(logit_mean=0.7, shift_base_tokens=16)
    run = load_run(run_path)
    assert run.config.flow == flow != FlowConfig()
    mc = run.model.config
    assert (mc.prediction, mc.rope_extrapolation, mc.mlp_ratio, mc.patch) == ("x", "ntk", 2.0, (2, 4, 4))
    assert list(mc.rope_train_grid) == summary["seen_grid"]  # recorded from the data, not the default
    assert mc.rope_train_grid[0] <= 2 and max(mc.rope_train_grid) <= 64 and mc.rope_train_grid != (16, 32, 32)
    assert run.model.rope.extrapolation == "ntk" and run.model.rope.train_grid == mc.rope_train_grid
    alone = load_dit(run.checkpoint)  # a checkpoint directory is also a plain DiT directory
    assert alone.config == mc and all(torch.equal(a, b) for a, b in zip(
        alone.state_dict().values(), load_run(run.checkpoint, weights="raw").model.state_dict().values()))

    reqs = requests(["a red circle moving left fast on a black background"], sizes=[(16, 16)], frames=[4])
    got = sample(run, reqs, steps=3, seed=3)[0]
    grids = [(4, 16, 16)]
    kw = dict(steps=3, cfg_scale=4.0, seed=3)
    with_run_flow = generate(run.model, run.encoder, [reqs[0].prompt], grids, flow=flow, **kw)[0]
    default_flow = generate(run.model, run.encoder, [reqs[0].prompt], grids, flow=FlowConfig(), **kw)[0]
    assert np.array_equal(got, from_video_CTHW(with_run_flow))
    assert not torch.allclose(with_run_flow, default_flow)  # the flow really changes the samples


def test_training_draws_timesteps_with_the_runs_flow_config(tmp_path, monkeypatch):
    from patchpack.model.flow import FlowConfig

    seen = []
    real = trainer.sample_timesteps
    monkeypatch.setattr(trainer, "sample_timesteps", lambda grid, *, config, generator: (
        seen.append(config), real(grid, config=config, generator=generator))[1])
    synth(tmp_path / "shards", num_samples=2, seed=0, shard_size=2, max_side=32, min_side=32, progress=False)
    cfg = load_config(TrainConfig, None, [
        f"run_dir={tmp_path / 'run'}", f"data.shards=[{tmp_path / 'shards'}]", "data.max_frames=2",
        "packer.patch=[1,8,8]", "packer.max_len=64", "packer.rows=1", "packer.buffer=1", "model.depth=1",
        "model.hidden=32", "model.heads=2", "loop.steps=1", "loop.threads=1", "flow.logit_mean=0.7"])
    trainer.train(cfg)
    assert seen and all(c == FlowConfig(logit_mean=0.7) for c in seen)
