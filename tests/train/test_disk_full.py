"""A full disk (ENOSPC) mid-write: the newest checkpoint stays the previous whole one, a shard
writer leaves nothing behind, the CLI says so in one line, and the same command resumes."""

from __future__ import annotations

import errno
import json
import tarfile

import numpy as np
import pytest

from patchpack.cli import main
from patchpack.train.data.media_encode import encode_image
from patchpack.train.data.shards import ShardWriter
from patchpack.train.data.synth import synth
from patchpack.train.loops import checkpoint as ckpt_mod
from patchpack.train.loops.checkpoint import latest_checkpoint, load_checkpoint
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.dit_loop import train
from patchpack.train.options import load_config


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    synth(tmp_path / "d", num_samples=6, shard_size=3, max_side=48, min_side=32, progress=False)
    cfg = load_config(TrainConfig, None, [
        f"run_dir={tmp_path / 'run'}", f"data.shards=[{tmp_path / 'd'}]", "data.max_frames=2",
        "packer.max_len=64", "packer.max_tokens_per_sample=32", "packer.max_frames=2", "packer.buffer=2",
        "model.depth=1", "model.hidden=32", "model.heads=2", "model.attn_backend=reference",
        "loop.progress=false", "loop.threads=1", "loop.device=cpu", "loop.ckpt_every=2", "loop.steps=4"])
    real, calls = ckpt_mod.save_file, {"n": 0}

    def fills_up(*a, **kw):  # the disk fills during the second checkpoint
        calls["n"] += 1
        if calls["n"] > 2:
            _enospc()
        return real(*a, **kw)

    monkeypatch.setattr(ckpt_mod, "save_file", fills_up)
    with pytest.raises(OSError, match="No space left"):
        train(cfg)
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert newest.name == "step_00000002" and load_checkpoint(newest)[0] == 2  # whole, and it loads
    again = train(cfg)  # space freed: the same command resumes
    assert again["start_step"] == 2 and again["step"] == 4


def test_a_full_disk_while_writing_shards_leaves_no_shard(tmp_path, monkeypatch):
    real, calls = tarfile.TarFile.addfile, {"n": 0}

    def fills_up(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            _enospc()
        return real(self, *a, **kw)

    monkeypatch.setattr(tarfile.TarFile, "addfile", fills_up)
    png = encode_image(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OSError), ShardWriter(tmp_path, max_count=2) as w:
        for i in range(5):
            w.write(f"k{i}", {"png": png, "json": b'{"caption": "x"}'})
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_it_in_one_line(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "c.json").write_text(json.dumps([{"file": "a.png", "caption": "x"}]))
    monkeypatch.setattr(ShardWriter, "write", _enospc)
    rc = main(["make-shards", str(src), "--captions", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "[Errno 28] No space left on device" in err[-1] and "Traceback" not in "".join(err)
    assert not list((tmp_path / "o").glob("*.tar*"))
