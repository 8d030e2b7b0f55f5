"""Data that gives nothing to train on (issue 15, item 1): a bounded stop with the skip counts by
reason, never a hang; stop signals reach the data loop; nothing usable never passes for a run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from patchpack.train.data import NoUsableData
from patchpack.train.data.media_encode import encode_image
from patchpack.train.data.records import RecordDecoder
from patchpack.train.data.shards import ShardWriter
from patchpack.train.data.synth import synth
from patchpack.train.loops import dit_loop
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.vae_config import VAETrainConfig
from patchpack.train.loops.vae_loop import train_vae
from patchpack.train.options import load_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    synth(out, num_samples=8, seed=0, shard_size=4, max_side=48, min_side=32, progress=False)
    return out


def _cfg(shards, run_dir, *extra) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.max_frames=2", "data.shuffle_buffer=2",
        "packer.max_len=64", "packer.rows=1", "packer.max_tokens_per_sample=32", "packer.max_frames=2",
        "packer.buffer=2", "model.depth=1", "model.hidden=32", "model.heads=2", "model.attn_backend=reference",
        "loop.progress=false", "loop.threads=1", "loop.device=cpu", "loop.steps=3", "loop.ckpt_every=100", *extra])


def _timed(fn, limit=120.0):
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        assert time.perf_counter() - t0 < limit, "took too long: a hang, not a bounded stop"


def test_endless_stream_of_unusable_samples_stops_with_counts_by_reason(shards, tmp_path):
    """The issue's repro: data.max_pixels=1 skips every sample; before, train() spun forever."""
    cfg = _cfg(shards, tmp_path, "data.max_pixels=1", "data.max_skips_in_a_row=20")
    with pytest.raises(NoUsableData, match=r"20 samples in a row were skipped.*too_large=20") as e:
        _timed(lambda: dit_loop.train(cfg))
    assert e.value.counts == {"too_large": 20}
    lines = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and {x["reason"] for x in lines} == {"too_large"}  # every skip named, not the first


def _write(out, samples, per_shard=2):
    with ShardWriter(out, max_count=per_shard) as w:
        for key, members in samples:
            w.write(key, members)
    return out


def test_shards_without_captions_stop_the_run(tmp_path):
    png = encode_image(np.zeros((16, 16, 3), np.uint8))
    data = _write(tmp_path / "d", [(f"s{i}", {"png": png, "json": b'{"source": {}}'}) for i in range(4)])
    with pytest.raises(NoUsableData, match="no_caption=10"):
        _timed(lambda: dit_loop.train(_cfg(data, tmp_path / "run", "data.max_skips_in_a_row=10")))


def test_oversize_drop_of_everything_stops_the_run(shards, tmp_path):
    """The packer refuses every sample (counted as packer:oversize); the stream sees it."""
    cfg = _cfg(shards, tmp_path, "packer.oversize=drop", "packer.max_len=4", "packer.max_tokens_per_sample=64",
               "data.max_skips_in_a_row=12")
    with pytest.raises(NoUsableData, match=r"packer:oversize=12"):
        _timed(lambda: dit_loop.train(cfg))


def test_finite_data_with_nothing_usable_is_an_error_not_a_finished_run(shards, tmp_path):
    cfg = _cfg(shards, tmp_path, "data.max_pixels=1", "data.epochs=1")
    with pytest.raises(NoUsableData, match=r"ended before the first step.*skipped 8 samples \(too_large=8\)"):
        dit_loop.train(cfg)
    empty = _write(tmp_path / "empty", [])  # no sample at all
    (empty / "x.tar").write_bytes(b"\0" * 1024)  # an empty tar
    with pytest.raises(NoUsableData, match="the shards hold no samples"):
        dit_loop.train(_cfg(empty, tmp_path / "run2", "data.epochs=1"))


def test_a_resume_at_the_end_of_finite_data_is_an_error(shards, tmp_path):
    done = dit_loop.train(_cfg(shards, tmp_path, "data.epochs=1", "loop.steps=1000"))
    assert done["stopped"] == "data_exhausted" and done["step"] > 0  # data ran out after some steps: fine
    with pytest.raises(NoUsableData, match="already at its end"):
        dit_loop.train(_cfg(shards, tmp_path, "data.epochs=1", "loop.steps=1000"))


def test_train_vae_with_nothing_usable_stops(shards, tmp_path):
    cfg = load_config(VAETrainConfig, None, [
        f"run_dir={tmp_path}", f"data.shards=[{shards}]", "data.max_pixels=1", "data.max_skips_in_a_row=10",
        "vae.widths=[8,8]", "vae.latent_channels=4", "loop.steps=2", "loop.threads=1"])
    with pytest.raises(NoUsableData, match="too_large=10"):
        _timed(lambda: train_vae(cfg))
    png = encode_image(np.zeros((2, 2, 3), np.uint8))  # smaller than one VAE cell: counted, not a crash
    tiny = _write(tmp_path / "tiny", [(f"s{i}", {"png": png, "json": b'{"caption": "x"}'}) for i in range(3)])
    cfg = load_config(VAETrainConfig, None, [
        f"run_dir={tmp_path / 'b'}", f"data.shards=[{tiny}]", "data.epochs=1",
        "vae.widths=[8,8]", "vae.latent_channels=4", "loop.steps=2", "loop.threads=1"])
    with pytest.raises(NoUsableData, match="vae_unfit=3"):
        train_vae(cfg)


def _signal_at_record(monkeypatch, n: int, sig) -> None:
    """Send `sig` to this process while the stream handles its n-th record (decoded whole, or
    probed for size-aware packing: whichever the stream does)."""
    calls = {"n": 0}
    for name in ("decode", "probe"):
        real = getattr(RecordDecoder, name)

        def wrapped(self, rec, _real=real):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), sig)
            return _real(self, rec)

        monkeypatch.setattr(RecordDecoder, name, wrapped)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_the_data_loop_and_checkpoints(shards, tmp_path, monkeypatch, sig):
    """Every sample is skipped and the bound is out of reach: only the signal can end the run.
    It arrives inside the data loop (in a decode), and the run stops there with a checkpoint."""
    _signal_at_record(monkeypatch, 30, sig)
    cfg = _cfg(shards, tmp_path, "data.max_pixels=1", "data.max_skips_in_a_row=100000000")
    out = _timed(lambda: dit_loop.train(cfg))
    assert out["stopped"] == sig.name.lower() and out["step"] == 0
    assert out["skipped"]["too_large"] == 30 and out["checkpoint"].endswith("step_00000000")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_signal_inside_a_step_resumes_bitwise(shards, tmp_path, monkeypatch):
    """The signal arrives while the stream decodes the samples of step 2: the checkpoint holds the
    stream's state mid-batch, and the resume yields the same batches as an unbroken run."""
    a = dit_loop.train(_cfg(shards, tmp_path / "a", "loop.steps=4", "loop.log_every=1"))
    _signal_at_record(monkeypatch, 5, signal.SIGTERM)
    b1 = dit_loop.train(_cfg(shards, tmp_path / "b", "loop.steps=4", "loop.log_every=1"))
    monkeypatch.undo()
    assert b1["stopped"] == "sigterm" and 0 < b1["step"] < 4
    b2 = dit_loop.train(_cfg(shards, tmp_path / "b", "loop.steps=4", "loop.log_every=1"))
    assert b2["start_step"] == b1["step"] and b2["loss"] == a["loss"]  # bitwise: the same float


def test_a_second_signal_aborts_at_once():
    from patchpack.train.stop import StopRequested, StopSignals, check

    with StopSignals() as stop:
        check()  # nothing requested: a no-op
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(StopRequested):
            check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    check()  # outside: a no-op again


def test_a_signal_stops_a_wait_on_dataloader_workers(shards, tmp_path):
    """Main process waiting on workers that skip forever: the signal raises there at once."""
    from patchpack.packer import PackerConfig
    from patchpack.train.data import DataConfig, PackedStream
    from patchpack.train.stop import StopRequested, StopSignals

    ds = PackedStream(DataConfig(shards=[str(shards)], max_pixels=1, max_skips_in_a_row=10**9),
                      PackerConfig(max_len=64, max_tokens_per_sample=32))
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    with StopSignals():
        timer.start()
        t0 = time.perf_counter()
        with pytest.raises(StopRequested):
            next(ds.loader(num_workers=2))
    timer.cancel()
    assert time.perf_counter() - t0 < 60
