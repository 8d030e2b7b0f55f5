"""Shards that look valid are valid (issue 15, items 3, 6, 8): a shard appears only complete, a
used output is refused, files outside SRC are refused, every file not packaged is named, and a
truncated tar counts the samples it lost."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest

from patchpack.packer import PackerConfig
from patchpack.train.data import DataConfig, PackedStream, VideoStream
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.reader import INDEX_NAME, read_index
from patchpack.train.data.shards import SKIP_LIST, ShardWriter, make_shards, prepare_out_dir
from patchpack.train.data.synth import synth


def _png(v=0, size=(8, 8)):
    return encode_image(np.full((*size, 3), v, np.uint8))


def _skip_list(out):
    return [json.loads(x) for x in (out / SKIP_LIST).read_text().splitlines()]


# --------------------------------------------------------------------------- the writer


def test_an_error_inside_the_writer_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError, match="crash"), ShardWriter(tmp_path, max_count=2) as w:
        for i in range(5):  # two full shards and a third open
            w.write(f"k{i}", {"png": _png(i), "json": b'{"caption": "x"}'})
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []  # no shard, no .tmp, no index


def test_shards_appear_only_at_close_and_are_indexed(tmp_path):
    w = ShardWriter(tmp_path, max_count=2)
    for i in range(3):
        w.write(f"k{i}", {"png": _png(i), "json": b'{"caption": "x"}'})
    assert not list(tmp_path.glob("*.tar")) and len(list(tmp_path.glob("*.tar.tmp"))) == 2  # kill -9 here: no shard
    assert sorted(p.name for p in w.close()) == ["shard-000000.tar", "shard-000001.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    index = read_index(tmp_path)
    assert {k: v["nsamples"] for k, v in index.items()} == {"shard-000000.tar": 2, "shard-000001.tar": 1}
    assert all(v["filesize"] == (tmp_path / k).stat().st_size for k, v in index.items())
    with pytest.raises(FileExistsError), ShardWriter(tmp_path, max_count=2) as again:
        again.write("k9", {"png": _png(), "json": b"{}"})  # a writer never replaces a shard


def test_a_repeated_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="already in"), ShardWriter(tmp_path, max_count=10) as w:
        w.write("same", {"png": _png(), "json": b"{}"})
        w.write("same", {"png": _png(), "json": b"{}"})  # a reader would merge the two into one


def test_a_used_output_is_refused_unless_overwritten(tmp_path):
    out = tmp_path / "out"
    synth(out, num_samples=4, shard_size=2, max_side=32, min_side=16, progress=False)
    (out / "shard-000009.tar.tmp").write_bytes(b"partial")  # left by a killed writer
    with pytest.raises(ValueError, match="already holds 2 shards.*--overwrite"):
        synth(out, num_samples=3, shard_size=3, max_side=32, min_side=16, progress=False)
    synth(out, num_samples=3, shard_size=3, max_side=32, min_side=16, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_NAME, "shard-000000.tar"])  # no old shard, no tmp
    assert read_index(out)["shard-000000.tar"]["nsamples"] == 3
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        prepare_out_dir(tmp_path / "file", overwrite=True)


def test_make_shards_crash_leaves_no_shard(tmp_path, monkeypatch):
    from patchpack.train.data import shards as shards_mod

    src = tmp_path / "src"
    src.mkdir()
    entries = []
    for i in range(4):
        (src / f"{i}.png").write_bytes(_png(i))
        entries.append({"file": f"{i}.png", "caption": "x"})
    (tmp_path / "c.json").write_text(json.dumps(entries))
    real, calls = shards_mod._check_media, {"n": 0}

    def crash_on_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("the machine ran out")
        return real(*a, **kw)

    monkeypatch.setattr(shards_mod, "_check_media", crash_on_third)
    with pytest.raises(MemoryError):
        make_shards(src, tmp_path / "c.json", tmp_path / "out", shard_size_mb=0.001, progress=False)
    assert not list((tmp_path / "out").glob("*.tar*"))


# --------------------------------------------------------------------------- make_shards input


def _src(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(_png(10))
    (src / "sub" / "b.mp4").write_bytes(encode_mp4(np.zeros((3, 8, 8, 3), np.uint8), fps=4))
    (src / "orphan.jpg").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8), fmt="jpg"))
    (src / "sub" / "orphan2.mp4").write_bytes(b"x")
    (src / "notes.txt").write_text("not media")
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(200))
    (src / "link.png").symlink_to(outside)
    (src / "inner.png").symlink_to(src / "a.png")  # a symlink inside SRC is fine
    os.mkfifo(src / "fifo.png")  # reading it would block forever
    return src, outside


def test_paths_outside_src_are_refused_and_every_skip_is_listed(tmp_path):
    src, outside = _src(tmp_path)
    entries = [{"file": "a.png", "caption": "a"}, {"file": "sub/b.mp4", "caption": "b"},
               {"file": "inner.png", "caption": "c"}, {"file": "../secret.png", "caption": "x"},
               {"file": str(outside), "caption": "x"}, {"file": "link.png", "caption": "x"},
               {"file": "sub/../../secret.png", "caption": "x"}, {"file": "fifo.png", "caption": "x"},
               {"file": 7, "caption": "x"}, {"file": "", "caption": "x"}, {"file": "gone.png", "caption": "x"}]
    caps = tmp_path / "c.jsonl"
    caps.write_text("\n".join(json.dumps(e) for e in entries))
    out = tmp_path / "out"
    s = make_shards(src, caps, out, progress=False)
    assert s["written"] == 3
    assert s["skipped"] == {"outside_src": 4, "not_a_file": 1, "bad_entry": 2, "missing_file": 1}
    assert s["uncaptioned"] == 2 and s["skip_list"] == str(out / SKIP_LIST)
    lines = _skip_list(out)
    assert len(lines) == 8 + 2  # one line per entry not packaged, one per uncaptioned file
    assert {x["key"] for x in lines if x["reason"] == "uncaptioned"} == {"orphan.jpg", "sub/orphan2.mp4"}
    packaged = [tarfile.open(p).getnames() for p in s["shards"]]
    assert not any(_png(200) == tarfile.open(p).extractfile(m).read() for p in s["shards"]
                   for m in tarfile.open(p).getmembers())  # the secret never got in
    assert sum(len(n) for n in packaged) == 6
    opted = make_shards(src, caps, tmp_path / "out2", allow_outside=True, progress=False)
    assert opted["written"] == 7 and "outside_src" not in opted["skipped"]


def test_make_shards_user_errors_are_value_errors(tmp_path):
    src, _ = _src(tmp_path)
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps([{"file": "a.png", "caption": "a"}]))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        make_shards(src, caps, tmp_path / "afile", progress=False)
    with pytest.raises(ValueError, match="is a directory"):
        make_shards(src, src, tmp_path / "o", progress=False)
    for bad in (float("inf"), float("nan"), 0, -1):
        with pytest.raises(ValueError, match="shard_size_mb"):
            make_shards(src, caps, tmp_path / "o", shard_size_mb=bad, progress=False)
    (tmp_path / "latin1.json").write_bytes('[{"file": "a.png", "caption": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        make_shards(src, tmp_path / "latin1.json", tmp_path / "o", progress=False)
    make_shards(src, caps, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="already holds 1 shards"):
        make_shards(src, caps, tmp_path / "o", progress=False)
    assert make_shards(src, caps, tmp_path / "o", overwrite=True, progress=False)["written"] == 1


def test_make_shards_header_check_and_streamed_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    video = np.random.default_rng(0).integers(0, 255, (5, 16, 24, 3), dtype=np.uint8)
    data = encode_mp4(video, fps=5)
    (src / "v.mp4").write_bytes(data)
    (src / "cut.mp4").write_bytes(data[: len(data) - 200])  # the index survives, the last frames do not
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps([{"file": "v.mp4", "caption": "v"}, {"file": "cut.mp4", "caption": "c"}]))
    full = make_shards(src, caps, tmp_path / "a", progress=False)  # decode: the cut file is caught
    assert full["written"] == 1 and sum(full["skipped"].values()) == 1
    assert next(iter(full["skipped"])).startswith("unreadable:")
    fast = make_shards(src, caps, tmp_path / "b", check="header", progress=False)
    assert fast["written"] == 2  # headers only: the stream will count the cut file when it reads it
    with tarfile.open(fast["shards"][0]) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("v.mp4"))
        assert tf.extractfile(member).read() == data  # streamed from the file, byte for byte
        meta = json.loads(tf.extractfile(member.name.replace(".mp4", ".json")).read())
    assert meta["source"] | {"file": 0} == {"fps": 5.0, "frames": 5, "width": 24, "height": 16, "file": 0}


# --------------------------------------------------------------------------- counting what a tar lost


def test_a_truncated_tar_counts_the_samples_it_lost(tmp_path):
    with ShardWriter(tmp_path, max_count=8) as w:
        for i in range(8):
            w.write(f"k{i}", {"png": _png(i, (16, 16)), "json": b'{"caption": "x"}'})
    shard = tmp_path / "shard-000000.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tf:  # cut inside sample 3's image: samples 3..7 are lost
        k3 = next(m for m in tf.getmembers() if m.name == "k3.png")
    shard.write_bytes(data[: k3.offset_data + 10])
    cfg = DataConfig(shards=[str(tmp_path)], epochs=1, shuffle_buffer=0, shuffle_shards=False)
    stream = VideoStream(cfg, skip_log=tmp_path / "skips.jsonl")
    got = [k for k, _, _ in stream]
    assert len(got) == 3 and stream.skips == {"truncated_shard": 5}
    (line,) = [json.loads(x) for x in (tmp_path / "skips.jsonl").read_text().splitlines()]
    assert line["count"] == 5 and "3 of 8 samples" in line["message"]

    shard.write_bytes(data[: k3.offset])  # cut between two samples: the tar reads as a clean, short one
    stream = VideoStream(cfg)
    assert len(list(stream)) == 3 and stream.skips == {"truncated_shard": 5}
    shard.write_bytes(data[: k3.offset - 700])  # cut inside sample 2's json: it is counted by what it lacks
    stream = VideoStream(cfg)
    assert len(list(stream)) + sum(stream.skips.values()) == 8

    packed = PackedStream(cfg, PackerConfig(max_len=256, max_tokens_per_sample=64))
    batches = list(packed)
    assert sum(b.num_samples for b in batches) + sum(packed.skips.values()) == 8


def test_a_fifo_shard_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "x.tar")
    stream = VideoStream(DataConfig(shards=[str(tmp_path)], epochs=1, shuffle_buffer=0))
    assert list(stream) == [] and stream.skips == {"bad_shard": 1}


def test_a_bad_header_mid_tar_is_never_a_quiet_end(tmp_path):
    """tarfile takes a header it cannot parse for the end of the archive and stops without a
    word; with the index the lost samples are counted, without it the shard is a bad_shard."""
    with ShardWriter(tmp_path, max_count=8) as w:
        for i in range(6):
            w.write(f"k{i}", {"png": _png(i), "json": b'{"caption": "x"}'})
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard) as tf:
        k3 = next(m for m in tf.getmembers() if m.name == "k3.png")
    data = bytearray(shard.read_bytes())
    data[k3.offset] ^= 0x20  # the member name: the header checksum no longer matches
    shard.write_bytes(bytes(data))
    cfg = DataConfig(shards=[str(tmp_path)], epochs=1, shuffle_buffer=0)
    stream = VideoStream(cfg)
    assert len(list(stream)) == 3 and stream.skips == {"truncated_shard": 3}
    (tmp_path / INDEX_NAME).unlink()
    stream = VideoStream(cfg)
    assert len(list(stream)) == 3 and stream.skips == {"bad_shard": 1}
