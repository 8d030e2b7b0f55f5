"""The training loop on tiny synthetic shards: metrics, bitwise resume, config errors, NaN guard."""

from __future__ import annotations

import io
import math
import os
import signal
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from patchpack.model import build_models
from patchpack.model.flow import FlowLoss
from patchpack.train.data.packed_stream import PackedStream
from patchpack.train.data.synth import synth
from patchpack.train.loops import dit_loop as trainer
from patchpack.train.loops.checkpoint import latest_checkpoint
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.metrics import Progress, read_metrics
from patchpack.train.options import ConfigError, load_config
from patchpack.train.parallel.wrap import apply_compile, apply_grad_checkpointing, autocast_dtype


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    synth(out, num_samples=12, seed=0, shard_size=4, max_side=64, min_side=32, progress=False)
    return str(out)


COND = ["conditioning.none=0.2", "conditioning.first_frame=0.4", "conditioning.last_frames=0.4"]


def _cfg(shards, run_dir, extra=(), **loop) -> TrainConfig:
    overrides = [
        f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.max_frames=4", "data.shuffle_buffer=4",
        "packer.max_len=128", "packer.rows=2", "packer.max_tokens_per_sample=64", "packer.max_frames=2",
        "packer.buffer=4", "model.depth=1", "model.hidden=64", "model.heads=2", "model.attn_backend=reference",
        "optim.warmup=2", "loop.log_every=1", "loop.threads=1", "loop.caption_dropout=0.5",
        "loop.progress=false", "loop.device=cpu",
    ] + [f"loop.{k}={v}" for k, v in loop.items()] + list(extra)
    return load_config(TrainConfig, None, overrides)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_six_steps_log_every_field_and_a_finite_loss(shards, tmp_path):
    summary = trainer.train(_cfg(shards, tmp_path, steps=6, ckpt_every=100))
    assert summary["step"] == 6 and summary["stopped"] == "steps"
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "fill", "samples_per_s", "skipped"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["loss"] > 0 and 0 < r["fill"] <= 1 and r["tokens_per_s"] > 0
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000006"
    assert (tmp_path / "config.yaml").read_text().startswith("run_dir:")


@pytest.mark.parametrize("extra", [(), COND], ids=["plain", "conditioned"])
def test_sigterm_checkpoints_and_resume_continues_bitwise(shards, tmp_path, monkeypatch, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    trainer.train(_cfg(shards, a, extra, steps=6, ckpt_every=100))

    real, calls = trainer.flow_loss, {"n": 0}

    def sigterm_on_third(*args, **kw):  # a scheduler preempting run b during step 3
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(trainer, "flow_loss", sigterm_on_third)
    first = trainer.train(_cfg(shards, b, extra, steps=6, ckpt_every=3))
    monkeypatch.setattr(trainer, "flow_loss", real)
    assert first["step"] == 3 and first["stopped"] == "sigterm"
    assert latest_checkpoint(b / "checkpoints").name == "step_00000003"
    second = trainer.train(_cfg(shards, b, extra, steps=6, ckpt_every=3, resume="auto"))
    assert second["start_step"] == 3 and second["step"] == 6
    la, lb = _losses(a), _losses(b)
    assert [la[s] for s in (4, 5, 6)] == [lb[s] for s in (4, 5, 6)]  # bitwise: floats, not approx
    wa = load_file(str(latest_checkpoint(a / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(b / "checkpoints") / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    given = [r["given_fraction"] for r in read_metrics(a / "metrics.jsonl") if "loss" in r]
    assert (max(given) > 0) == bool(extra)  # guard: the conditioned run really gave tokens


def test_unknown_config_key_fails_at_load(shards, tmp_path):
    with pytest.raises(ConfigError, match="no_such_knob"):
        load_config(TrainConfig, None, ["loop.no_such_knob=1"])
    yaml = tmp_path / "bad.yaml"
    yaml.write_text("optim:\n  lr: 1e-3\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="momentum"):
        load_config(TrainConfig, yaml)


def test_nonfinite_loss_is_skipped_then_stops_the_run(shards, tmp_path, monkeypatch):
    real = trainer.flow_loss
    calls = {"n": 0}

    def nan_after_two(*args, **kw):
        out = real(*args, **kw)
        calls["n"] += 1
        return out if calls["n"] <= 2 else FlowLoss(out.loss * float("nan"), out.loss_S, out.t_S)

    monkeypatch.setattr(trainer, "flow_loss", nan_after_two)
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row"):
        trainer.train(_cfg(shards, tmp_path, steps=10, ckpt_every=100, max_nonfinite=3))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # two real steps, then none
    skipped = [r for r in rows if "skipped_step" in r]
    assert [r["skipped_step"] for r in skipped] == ["nonfinite_loss"] * 3
    assert [r["nonfinite_total"] for r in skipped] == [1, 2, 3] and all(r["step"] == 2 for r in skipped)


# --------------------------------------------------------------------------- metrics: bar, TensorBoard


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_tty_and_records_print_above_it(capsys):
    off = Progress(total=5, enabled=True, stream=io.StringIO())  # a log file, not a terminal
    assert not off.active
    off.write("step 1 | loss 0.5")
    assert capsys.readouterr().out == "step 1 | loss 0.5\n"

    tty = _Tty()
    bar = Progress(total=5, initial=2, enabled=True, stream=tty, mininterval=0)
    assert bar.active and not Progress(total=5, enabled=False, stream=_Tty()).active
    bar.update(4, 0.25)
    bar.write("step 4 | loss 0.25")
    bar.close()
    assert capsys.readouterr().out == "step 4 | loss 0.25\n"  # the record, whole, on stdout
    assert "4/5" in tty.getvalue() and "loss 0.2500" in tty.getvalue()  # the bar, on its own stream


def test_tensorboard_without_the_package_is_a_clear_error(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    with pytest.raises(ValueError, match="loop.tensorboard=true needs the tensorboard package"):
        trainer.train(_cfg(shards, tmp_path, steps=1, tensorboard=True))


def test_tensorboard_gets_every_numeric_field_and_skip_counts(shards, tmp_path, monkeypatch):
    scalars, dirs = [], []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (package not required)
        def __init__(self, log_dir):
            dirs.append(log_dir)

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            dirs.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    trainer.train(_cfg(shards, tmp_path, steps=2, ckpt_every=100, tensorboard=True))
    assert dirs == [str(tmp_path / "tb"), "closed"]
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    for r in rows:
        for k in ("loss", "lr", "grad_norm", "tokens_per_s", "fill", "samples_per_s"):
            assert (k, r[k], r["step"]) in scalars
        assert all((f"skipped/{why}", n, r["step"]) in scalars for why, n in r["skipped"].items())


def test_unsupported_parallel_and_precision_are_refused(shards, tmp_path):
    with pytest.raises(ValueError, match="loop.parallel must be 'ddp' or 'fsdp', got 'zero'"):
        trainer.train(_cfg(shards, tmp_path, steps=1, parallel="zero"))
    with pytest.raises(ValueError, match="loop.precision must be"):
        trainer.train(_cfg(shards, tmp_path, steps=1, precision="fp16"))


# --------------------------------------------------------------------------- GPU knobs, from the outside


def _loss_and_grads(model, encoder, batch):
    model.zero_grad(set_to_none=True)
    encoder.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(7)
    captions = [m["caption"] for m in batch.meta]
    loss = trainer.flow_loss(model, batch, *encoder(captions), generator=gen).loss
    loss.backward()
    named = list(model.named_parameters()) + [(f"text.{k}", p) for k, p in encoder.named_parameters()]
    return loss.detach(), {k: p.grad.clone() for k, p in named if p.grad is not None}


def _models(cfg):
    models = build_models(replace(cfg.model, patch=tuple(cfg.packer.patch)), text=cfg.text, load_vae_weights=False)
    return models.dit, models.text_encoder


def _one_batch(cfg):
    return next(iter(PackedStream(cfg.data, cfg.packer)))


def test_grad_checkpointing_gives_the_same_loss_and_grads_and_keeps_the_keys(shards, tmp_path):
    cfg = _cfg(shards, tmp_path, steps=1)
    cfg.model = replace(cfg.model, depth=2)
    torch.manual_seed(0)
    model, encoder = _models(cfg)
    batch = _one_batch(cfg)
    for block in model.blocks:  # zero-init gates would hide a wrong recompute: wake them up
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    loss, grads = _loss_and_grads(model, encoder, batch)
    keys = list(model.state_dict())

    calls = []
    for block in model.blocks:
        block.attn.register_forward_hook(lambda *a: calls.append(1))
    assert apply_grad_checkpointing(model) == 2
    loss_ckpt, grads_ckpt = _loss_and_grads(model, encoder, batch)
    assert len(calls) == 4  # each block's attention ran twice: forward, then the recompute in backward
    assert list(model.state_dict()) == keys  # checkpoints load with or without the knob
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.slow
def test_compile_wraps_each_block_in_place(shards, tmp_path):  # dynamo capture alone: ~1 min on 2 loaded cores
    cfg = _cfg(shards, tmp_path, steps=1)
    torch.manual_seed(0)
    model, encoder = _models(cfg)
    batch = _one_batch(cfg)
    loss, _ = _loss_and_grads(model, encoder, batch)
    keys = list(model.state_dict())
    assert apply_compile(model, backend="eager") == len(model.blocks)  # dynamo capture, no codegen
    loss_c, _ = _loss_and_grads(model, encoder, batch)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_loop_compile_trains_like_eager(shards, tmp_path):  # inductor codegen: minutes on CPU
    eager = trainer.train(_cfg(shards, tmp_path / "eager", steps=2, ckpt_every=100))
    compiled = trainer.train(_cfg(shards, tmp_path / "compiled", steps=2, ckpt_every=100, compile=True))
    assert math.isclose(compiled["loss"], eager["loss"], rel_tol=1e-4)


def test_bf16_on_cpu_is_allowed_with_a_warning_and_trains(shards, tmp_path):
    cfg = _cfg(shards, tmp_path, steps=2, ckpt_every=100, precision="bf16")
    cfg.model = replace(cfg.model, attn_backend="cpu")  # the fp32 reference kernel is not autocast-safe (overflows in bf16)
    with pytest.warns(UserWarning, match="bf16 on CPU"):
        summary = trainer.train(cfg)
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16


def test_gpu_config_loads_and_says_what_it_promises():
    cfg = load_config(TrainConfig, Path(__file__).parents[3] / "configs" / "gpu.yaml", [])
    assert (cfg.model.hidden, cfg.model.depth, cfg.model.heads) == (768, 12, 12) and cfg.text == "minilm" and cfg.packer.max_len >= 4096
    assert cfg.loop.precision == "bf16" and cfg.loop.parallel == "ddp" and cfg.loop.num_workers > 0
    assert cfg.loop.grad_checkpointing and cfg.loop.compile
